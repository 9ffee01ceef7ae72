"""Restart latency of ollamactl against systemctl, as alice, in one booted container.

Prints, per suite, medians over paired runs (order alternated within pairs):
  A  ollamactl restart --no-wait   vs  systemctl restart --no-block   (queue the job, return)
  B  ollamactl restart --no-wait   vs  systemctl restart              (the issue's comparison)
  C  ollamactl restart             vs  systemctl restart              (ours also waits for the API)
and the readiness lag: from the stand-in's "Listening on" (journal timestamp
of the new invocation) to the moment ``ollamactl restart`` returned.

The container gets a bench-only drop-in ``StartLimitIntervalSec=0`` and an
ollamactl config without a restart budget, so that back-to-back restarts are
refused neither by systemd's start limit nor by ollamactl's budget.

    python3 -m bench.bench_restart [--suite bookworm|trixie] [--pairs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench._bed import booted
from tests import testbed

REPO = Path(__file__).resolve().parents[1]

HARNESS = r"""
import json, subprocess, sys, time, urllib.request

def ready():
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            urllib.request.urlopen("http://127.0.0.1:11434/api/version", timeout=1).read()
            return
        except Exception:
            time.sleep(0.02)
    sys.exit("ollama did not come back")

def timed(argv):
    ready()
    time.sleep(0.3)  # let the previous start settle
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    end = time.time()
    if r.returncode != 0:
        sys.exit(f"{argv} failed: {r.returncode} {r.stderr}")
    return dt, end, r.stdout

pairs = int(sys.argv[1])
OURS_NOWAIT = ["ollamactl", "restart", "--no-wait"]
OURS = ["ollamactl", "restart", "--json"]
SC_NOBLOCK = ["systemctl", "restart", "--no-block", "ollama.service"]
SC = ["systemctl", "restart", "ollama.service"]
out = {"A": [], "B": [], "C": [], "lag": []}
for i in range(pairs):
    for key, ours, theirs in (("A", OURS_NOWAIT, SC_NOBLOCK), ("B", OURS_NOWAIT, SC), ("C", OURS, SC)):
        first, second = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        r1, r2 = timed(first), timed(second)
        o, t = (r1, r2) if i % 2 == 0 else (r2, r1)
        out[key].append((o[0], t[0]))
        if key == "C":
            res = json.loads(o[2])
            out["lag"].append((res["new_invocation_id"], o[1]))
ready()
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", choices=testbed.SUITES)
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args()
    with booted(args.suite) as c:
        c.write_file("/etc/systemd/system/ollama.service.d/bench.conf", "[Unit]\nStartLimitIntervalSec=0\n")
        # and ollamactl's own budget, which would refuse back-to-back restarts
        c.write_file("/etc/ollamactl/config.toml", "max_restarts = 100\nrestart_window = 1\nrestart_backoff = 0\n")
        c.run(["systemctl", "daemon-reload"], check=True)
        c.write_file("/tmp/harness.py", HARNESS)
        r = c.run(["python3", "/tmp/harness.py", str(args.pairs)], user="alice", timeout=1800, check=True)
        data = json.loads(r.stdout)
        lags = []
        for inv, returned_at in data["lag"]:
            j = c.run(["journalctl", "-o", "json", "--no-pager", f"_SYSTEMD_INVOCATION_ID={inv}"], check=True)
            listen = [json.loads(line) for line in j.stdout.splitlines()]
            stamps = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in listen if "Listening on" in str(e.get("MESSAGE"))]
            if stamps:
                lags.append(returned_at - stamps[0])
    print(f"suite {args.suite}, {args.pairs} pairs, as alice (group ollamactl), medians:")
    labels = {
        "A": "ollamactl restart --no-wait  vs systemctl restart --no-block",
        "B": "ollamactl restart --no-wait  vs systemctl restart",
        "C": "ollamactl restart (API ready) vs systemctl restart",
    }
    for key, label in labels.items():
        ours = statistics.median(o for o, _ in data[key])
        theirs = statistics.median(t for _, t in data[key])
        ratio = statistics.median(o / t for o, t in data[key])
        print(f"  {label}: {ours * 1000:7.1f} ms vs {theirs * 1000:7.1f} ms, ratio {ratio:.2f}")
    if lags:
        print(
            f"  readiness lag (stand-in listening -> restart returned): median {statistics.median(lags) * 1000:.1f} ms,"
            f" max {max(lags) * 1000:.1f} ms over {len(lags)} restarts"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
