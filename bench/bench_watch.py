"""The watchdog's figures, with the shipped defaults, in one booted container.

    python3 -m bench.bench_watch [--suite bookworm|trixie] [--runs 5] [--soak 60]

Prints medians over ``--runs`` of:
  - full wedge (every request hangs) -> /api/version answering again   goal <= 10 s (Kubernetes' defaults: >= 31 s)
  - the same when the wedged process ignores SIGTERM                    goal <= 20 s
  - restarts caused by 100 concurrent `ollamactl restart --since T`     goal exactly 1
  - the watchdog's RSS and CPU over ``--soak`` seconds at a 1 s period  goal <= 30 MiB, <= 0.5 %
Between runs the unit's startup grace (10 s) is let pass, so each run starts from a steady state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench._bed import booted
from tests import testbed
from tests.e2e.test_watch import MEASURE, UNIT, WATCHDOG, ensure_units

REPO = Path(__file__).resolve().parents[1]


def settle(c: testbed.Container, grace: float = 10.5) -> None:
    up = c.sh(
        "echo $(cut -d' ' -f1 /proc/uptime) $(systemctl show -p ActiveEnterTimestampMonotonic --value ollama.service)",
        check=True,
    ).stdout.split()
    age = float(up[0]) - int(up[1]) / 1e6
    if age < grace:
        time.sleep(grace - age)


def fresh(c: testbed.Container, mode: str = "ok") -> None:
    c.write_file("/etc/ollama-standin/mode", mode + "\n")
    c.run(["systemctl", "stop", WATCHDOG], check=True)
    c.run(["systemctl", "restart", UNIT], check=True)
    c.run(["systemctl", "reset-failed", UNIT], check=True)
    c.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)
    c.run(["systemctl", "start", WATCHDOG], check=True, timeout=60)
    settle(c)


def wedge_runs(c: testbed.Container, runs: int, mode: str) -> list[dict]:
    out = []
    for _ in range(runs):
        fresh(c, mode)
        r = c.run(["python3", "/root/measure.py", "SIGUSR2", "60"], timeout=120, check=True)
        out.append(json.loads(r.stdout))
    return out


def concurrent_detectors(c: testbed.Container) -> int:
    fresh(c)
    c.run(["systemctl", "stop", WATCHDOG], check=True)  # only the 100 detectors act
    before = c.run(["systemctl", "show", "-p", "InvocationID", "--value", UNIT], check=True).stdout
    seen = time.time()
    c.sh(f"kill -USR1 $(systemctl show -p MainPID --value {UNIT})", check=True)
    r = c.run(
        ["/bin/sh", "-c", f"for i in $(seq 100); do ollamactl restart --json --since {seen} >/tmp/d.$i & done; wait;"
         " cat /tmp/d.*"],
        user="alice", timeout=600,
    )  # fmt: skip
    actions = [json.loads(line).get("action") for line in r.stdout.splitlines()]
    after = c.run(["systemctl", "show", "-p", "InvocationID", "--value", UNIT], check=True).stdout
    assert len(actions) == 100 and after != before, r.stdout[-500:]
    return actions.count("restarted")


def soak(c: testbed.Container, seconds: float) -> tuple[float, float]:
    fresh(c)
    pid = c.run(["systemctl", "show", "-p", "MainPID", "--value", WATCHDOG], check=True).stdout.strip()
    tick = int(c.run(["getconf", "CLK_TCK"], check=True).stdout)

    def sample() -> tuple[float, int, int]:
        stat = c.run(["cat", f"/proc/{pid}/stat"], check=True).stdout.rsplit(")", 1)[1].split()
        rss = next(int(x.split()[1]) for x in c.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines()
                   if x.startswith("VmRSS:"))  # fmt: skip
        return time.monotonic(), int(stat[11]) + int(stat[12]), rss

    t0, cpu0, _ = sample()
    rss_max = 0
    while time.monotonic() - t0 < seconds:
        time.sleep(5)
        _, _, rss = sample()
        rss_max = max(rss_max, rss)
    t1, cpu1, rss = sample()
    return max(rss_max, rss) / 1024, 100 * (cpu1 - cpu0) / tick / (t1 - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", choices=testbed.SUITES)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--soak", type=float, default=60)
    args = parser.parse_args()
    with booted(args.suite) as c:
        ensure_units(c)
        c.write_file("/root/measure.py", MEASURE)
        plain = wedge_runs(c, args.runs, "ok")
        stubborn = wedge_runs(c, args.runs, "ignore-sigterm")
        restarts = concurrent_detectors(c)
        rss, cpu = soak(c, args.soak)
    med = statistics.median
    print(f"suite {args.suite}, shipped defaults (period 1 s, probe timeout 2 s, threshold 3), {args.runs} runs:")
    for label, runs, goal in (("full wedge", plain, 10), ("full wedge, SIGTERM ignored", stubborn, 20)):
        rec = [r["recover"] for r in runs]
        print(f"  {label}: detect median {med(r['detect'] for r in runs):.1f}s, API answering again median "
              f"{med(rec):.1f}s (max {max(rec):.1f}s), goal <= {goal}s")  # fmt: skip
    print(f"  100 concurrent detectors: {restarts} restart(s), goal 1")
    print(f"  watchdog over {args.soak:.0f}s at a 1 s period: RSS {rss:.1f} MiB, CPU {cpu:.2f} %"
          " (goals <= 30 MiB, <= 0.5 %)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
