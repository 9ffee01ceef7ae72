"""Restart latency of ollamactl against its floor and systemctl, as alice, in one booted container.

Prints, per suite, medians over rounds (the order of the commands rotates from round to round):

  floor   python3 running the least a Python client on these dependencies must do: the
          interpreter, ``import asyncio, dbus_next.aio`` (with dbus-next's unused GLib
          backend kept out, as ollamactl keeps it out) and the bus round trips of a checked
          restart: connect, read the unit's state (two GetAll), TryRestartUnit
  ours    ollamactl restart --no-wait
  sc      systemctl try-restart --no-block (the same verb; below, the blocking try-restart)

and the ratio ours / floor (goal: at most 1.25, issue 9), with the parts of the floor
(interpreter alone; plus the imports).  Then:

  detectors   100 concurrent ``ollamactl restart --json --since <now>``: all returned within
              N s (goal 6 s), exactly one restart and 99 skips; once with the URL from the unit (the
              late ones ask PID 1 over D-Bus), once naming it with ``--url`` as an app's workers can (the
              late ones skip on PID 1's record, without D-Bus: issue 16 §4)
  readiness   from the stand-in's "Listening on" (journal timestamp of the new invocation) to
              the moment ``ollamactl restart`` returned (goal: median at most 25 ms)

The container gets a bench-only drop-in ``StartLimitIntervalSec=0`` and an ollamactl config
without a restart budget, so that back-to-back restarts are refused neither by systemd's start
limit nor by ollamactl's budget.

    python3 -m bench.bench_restart [--suite bookworm|trixie|sid] [--rounds 15] [--detector-runs 3] [--deb DEB]
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench._bed import booted
from tests import testbed

GOAL_RATIO = 1.25
GOAL_DETECTORS = 6.0  # seconds until the last of 100 returned
GOAL_LAG = 0.025  # seconds, median

FLOOR = r"""
import sys
sys.modules["gi"] = None  # as ollamactl's CLI does: dbus-next's GLib backend is not used
import asyncio, dbus_next.aio
del sys.modules["gi"]
from dbus_next import BusType, Message, MessageType

UNIT_PATH = "/org/freedesktop/systemd1/unit/ollama_2eservice"

def call(bus, path, iface, member, sig="", body=()):
    return bus.call(Message(destination="org.freedesktop.systemd1", path=path, interface=iface, member=member,
                            signature=sig, body=list(body)))

async def main():
    bus = await dbus_next.aio.MessageBus(bus_type=BusType.SYSTEM).connect()
    props = "org.freedesktop.DBus.Properties"
    unit, service = await asyncio.gather(
        call(bus, UNIT_PATH, props, "GetAll", "s", ["org.freedesktop.systemd1.Unit"]),
        call(bus, UNIT_PATH, props, "GetAll", "s", ["org.freedesktop.systemd1.Service"]),
    )
    if unit.body[0]["ActiveState"].value != "active":
        sys.exit("not active")
    reply = await call(bus, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "TryRestartUnit", "ss",
                       ["ollama.service", "replace"])
    if reply.message_type == MessageType.ERROR:
        sys.exit(f"{reply.error_name}: {reply.body}")
    print(reply.body[0])
    bus.disconnect()

asyncio.run(main())
"""

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

def timed(argv, restarts=True):
    if restarts:
        ready()
        time.sleep(0.3)  # let the previous start settle
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    end = time.time()
    if r.returncode != 0:
        sys.exit(f"{argv} failed: {r.returncode} {r.stderr}")
    return dt, end, r.stdout

rounds, detector_runs = int(sys.argv[1]), int(sys.argv[2])
CMDS = {
    "floor": (["python3", "/tmp/floor.py"], True),
    "ours": (["ollamactl", "restart", "--no-wait"], True),
    "sc": (["systemctl", "try-restart", "--no-block", "ollama.service"], True),
    "sc_block": (["systemctl", "try-restart", "ollama.service"], True),
    "ours_wait": (["ollamactl", "restart", "--json"], True),
    "python": (["python3", "-c", "pass"], False),
    "imports": (["python3", "-c", "import sys; sys.modules['gi'] = None; import asyncio, dbus_next.aio"], False),
}
out = {k: [] for k in CMDS}
out["lag"] = []
names = list(CMDS)
for i in range(rounds):
    for k in names[i % len(names):] + names[: i % len(names)]:
        argv, restarts = CMDS[k]
        dt, end, stdout = timed(argv, restarts)
        out[k].append(dt)
        if k == "ours_wait":
            out["lag"].append((json.loads(stdout)["new_invocation_id"], end))
out["detectors"] = []
VARIANTS = {"the URL from the unit (D-Bus)": [], "naming the URL (PID 1's record)": ["--url", "http://127.0.0.1:11434"]}
for variant, extra in [v for _ in range(detector_runs) for v in VARIANTS.items()]:
    ready()
    time.sleep(0.5)
    seen = time.time()
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(["ollamactl", "restart", "--json", "--since", repr(seen), "--reason", f"detector-{n}", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(100)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate()
        results.append(json.loads(stdout) if stdout.strip() else {"error": stderr.strip()[-300:]})
    elapsed = time.monotonic() - t0
    actions = [r.get("action", r.get("error")) for r in results]
    out["detectors"].append({"variant": variant, "seconds": elapsed, "restarted": actions.count("restarted"),
                             "skipped": actions.count("skipped"),
                             "other": sorted(a for a in actions if a not in ("restarted", "skipped"))[:5]})
ready()
print(json.dumps(out))
"""


def _verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", choices=testbed.SUITES)
    parser.add_argument("--rounds", "--pairs", type=int, default=15, help="rounds of every command (default 15)")
    parser.add_argument("--detector-runs", type=int, default=3, help="runs of the 100 detectors (default 3)")
    parser.add_argument("--deb", help="the .deb to install (default: build it from this tree, cached by source hash)")
    args = parser.parse_args()
    with booted(args.suite, args.deb) as c:
        c.write_file("/etc/systemd/system/ollama.service.d/bench.conf", "[Unit]\nStartLimitIntervalSec=0\n")
        # and ollamactl's own budget, which would refuse back-to-back restarts
        c.write_file("/etc/ollamactl/config.toml", "max_restarts = 100\nrestart_window = 1\nrestart_backoff = 0\n")
        c.run(["systemctl", "daemon-reload"], check=True)
        c.write_file("/tmp/harness.py", HARNESS)
        c.write_file("/tmp/floor.py", FLOOR)
        versions = c.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "python3", "python3-dbus-next", "python3-pydantic"],
            check=True,
        ).stdout.split("\n")
        r = c.run(
            ["python3", "/tmp/harness.py", str(args.rounds), str(args.detector_runs)],
            user="alice",
            timeout=3600,
            check=True,
        )
        data = json.loads(r.stdout)
        lags = []
        for inv, returned_at in data["lag"]:
            j = c.run(["journalctl", "-o", "json", "--no-pager", f"_SYSTEMD_INVOCATION_ID={inv}"], check=True)
            listen = [json.loads(line) for line in j.stdout.splitlines()]
            stamps = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in listen if "Listening on" in str(e.get("MESSAGE"))]
            if stamps:
                lags.append(returned_at - stamps[0])
    print(f"suite {args.suite} ({', '.join(v for v in versions if v)}); {args.rounds} rounds, as alice, medians:")
    floor, ours, sc = (statistics.median(data[k]) for k in ("floor", "ours", "sc"))
    print(f"  {'':<44} {'floor':>10} {'ollamactl':>10} {'systemctl':>10}   ours/floor")
    print(
        f"  {'restart, not waiting (--no-wait / --no-block)':<44} {_ms(data['floor'])} {_ms(data['ours'])} "
        f"{_ms(data['sc'])}   {ours / floor:.2f} (goal <= {GOAL_RATIO}) {_verdict(ours / floor <= GOAL_RATIO)}"
    )
    print(f"  {'  floor = interpreter':<44} {_ms(data['python'])}")
    print(f"  {'        + import asyncio, dbus_next.aio':<44} {_ms(data['imports'])}")
    print(f"  {'        + bus round trips':<44} {_ms(data['floor'])}")
    print(
        f"  {'systemctl try-restart (blocking)':<44} {'':>10} {'':>10} {_ms(data['sc_block'])}   "
        f"ours/sc(no-block) {ours / sc:.2f}"
    )
    print(f"  {'ollamactl restart (waits for the API)':<44} {'':>10} {_ms(data['ours_wait'])}")
    for n, run in enumerate(data["detectors"], 1):
        verdict = (
            "ok" if run["seconds"] <= GOAL_DETECTORS and run["restarted"] == 1 and run["skipped"] == 99 else "MISSED"
        )
        print(
            f"  100 concurrent `restart --since` detectors, {run['variant']}, run {n}: all returned within "
            f"{run['seconds']:.2f} s "
            f"(goal {GOAL_DETECTORS:g} s), {run['restarted']} restarted, {run['skipped']} skipped"
            f"{', other: ' + ', '.join(map(str, run['other'])) if run['other'] else ''}  {verdict}"
        )
    if lags:
        median = statistics.median(lags)
        print(
            f"  readiness lag (stand-in listening -> restart returned): median {median * 1000:.1f} ms "
            f"(goal {GOAL_LAG * 1000:g} ms) {'ok' if median <= GOAL_LAG else 'MISSED'}, "
            f"max {max(lags) * 1000:.1f} ms over {len(lags)} restarts"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
