"""The watchdog's figures, shipped defaults plus a model, on each release: wedges found, and no harm done.

    python3 -m bench.bench_watch [--suite bookworm|trixie|sid|all] [--runs 3] [--saturated 120] [--stream 180]
                                 [--load 60] [--stop 60] [--soak 60] [--cases wedges,harm,stop,soak]
                                 [--deb PATH] [--json FILE]

For each release, in one booted container with the .deb installed and the
stand-in Ollama (its scheduler: slots, FIFO, load time, keep-alive), prints:
  - per faithful wedge (stuck-inference, silent, stuck-eviction, stuck-child), idle (a model
    loaded, no client) and under load (clients at 2 x NUM_PARALLEL): detection (wedge -> the
    unit leaves "active") and recovery (wedge -> /api/version answering again), median and max
    over ``--runs``, and the client requests the wedge and its restart killed
    goals: a full wedge (silent) answered again <= 5 s, an idle deep wedge <= 15 s
  - false restarts (goal 0) and failed client requests (goal 0) under a saturated load
    (``--saturated`` s), one streamed generation of ``--stream`` s holding the only slot, two
    model loads of ``--load`` s each under load, and ``systemctl stop`` held ``--stop`` s
  - the watchdog's RSS and CPU over ``--soak`` s while idle (goals <= 30 MiB, <= 0.5 %)
The cases are those of tests/e2e/test_harm.py (bench/harm_bed.py), run longer than in CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from bench import harm_bed as hc
from bench._bed import booted
from tests import testbed


def soak(h: hc.HarmBed, seconds: float) -> tuple[float, float, float | None]:
    """(max RSS MiB, CPU % of its main process, CPU % of its unit with children such as journalctl) of the
    watchdog over ``seconds`` with a model loaded and nobody using it."""
    c = h.c
    h.configure()
    h.warm()
    pid = h.prop("MainPID", hc.WATCHDOG)
    tick = int(c.run(["getconf", "CLK_TCK"], check=True).stdout)

    def unit_ns() -> int | None:
        v = h.prop("CPUUsageNSec", hc.WATCHDOG)
        return int(v) if v.isdigit() else None  # "[not set]" without CPU accounting

    def sample() -> tuple[float, int, int, int | None]:
        stat = c.run(["cat", f"/proc/{pid}/stat"], check=True).stdout.rsplit(")", 1)[1].split()
        rss = next(int(x.split()[1]) for x in c.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines()
                   if x.startswith("VmRSS:"))  # fmt: skip
        return time.monotonic(), int(stat[11]) + int(stat[12]), rss, unit_ns()

    t0, cpu0, rss_max, ns0 = sample()
    while time.monotonic() - t0 < seconds:
        time.sleep(5)
        rss_max = max(rss_max, sample()[2])
    t1, cpu1, rss, ns1 = sample()
    unit = None if ns0 is None or ns1 is None else 100 * (ns1 - ns0) / 1e9 / (t1 - t0)
    return max(rss_max, rss) / 1024, 100 * (cpu1 - cpu0) / tick / (t1 - t0), unit


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):5.1f} / {max(values):5.1f}"


def run_suite(suite: str, args: argparse.Namespace, log) -> dict[str, Any]:
    out: dict[str, Any] = {"suite": suite, "wedges": [], "harm": []}
    t_start = time.monotonic()
    with booted(suite, args.deb) as c:
        real = args.runner == "llama-server"
        h = hc.real_bed(c, report=log) if real else hc.HarmBed(c, report=log)
        h.install()
        out["runner"], out["model"] = h.runner, h.model
        out["startup_grace"] = h.grace

        def case(name: str, fn, *a) -> Any:
            log(f"{suite}: {name} ...")
            try:
                return fn(h, *a)
            finally:
                h.restore()

        for kind in (hc.RUNNER_WEDGES if real else hc.WEDGES) if "wedges" in args.cases else ():
            for loaded in (False, True):
                rows = []
                for i in range(args.runs):
                    w = case(f"wedge {kind} {'loaded' if loaded else 'idle'} run {i + 1}", hc.wedge, kind, loaded)
                    load = w.out.get("load") or {}
                    rows.append(
                        {
                            "restarted": w.out["restarted"],
                            "detect": w.out.get("detect"),
                            "recover": w.out.get("recover"),
                            "generate_after": (w.out.get("generate_after") or {}).get("ok"),
                            "killed": load.get("killed"),
                            "refused": load.get("refused"),
                            "restarts": w.restarts.count,
                            "evidence": w.evidence,
                        }
                    )
                out["wedges"].append({"kind": kind, "loaded": loaded, "runs": rows})
        harm = (
            ("saturated load", hc.saturated_load, args.saturated),
            ("one long stream", hc.real_stream if real else hc.long_stream, args.stream),
            *(
                (("a long prompt under load", hc.real_long_prompt, hc.REAL_PROMPT_CHARS),
                 ("a model load under load", hc.real_model_load, args.load))
                if real else (("slow model loads", hc.slow_loads, args.load),)
            ),
        )  # fmt: skip
        for name, fn, length in harm if "harm" in args.cases else ():
            r = case(f"{name} {length:g} s", fn, length)
            out["harm"].append(
                {
                    "case": name,
                    "seconds": length,
                    "restarts": r.restarts.count,
                    "restart_counts": str(r.restarts),
                    "verdicts": r.restarts.verdicts,
                    "loads": r.loads(),
                    "failed": r.failed(),
                }
            )
        if "stop" in args.cases:
            s = case(f"admin stop {args.stop:g} s", hc.admin_stop, args.stop)
            out["stop"] = {
                "seconds": args.stop,
                "states": sorted(s.hold["states"]),
                "starts": s.restarts.count,
                "restart_exit": s.restart_rc,
                "probe": s.probe.get("outcome"),
            }
        if "soak" in args.cases and args.soak > 0:
            log(f"{suite}: soak {args.soak:g} s ...")
            try:
                out["soak"] = dict(zip(("rss_mib", "cpu_pct", "unit_cpu_pct"), soak(h, args.soak), strict=True))
            finally:
                h.restore()
    out["minutes"] = round((time.monotonic() - t_start) / 60, 1)
    return out


def print_suite(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nsuite {r['suite']}: shipped watchdog defaults + model {r['model']} in the {r['runner']} runner"
        f" (startup grace {r['startup_grace']:g} s),"
        f" {args.runs} run(s) per wedge, {r['minutes']} min"
    )
    if r["wedges"]:
        head = f"{'detect s med/max':>17} {'recover s med/max':>18}  {'killed/run':10}  restarts/run"
        print(f"  {'wedge':16} {'':6} {head}")
    for w in r["wedges"]:
        rows = w["runs"]
        load = "loaded" if w["loaded"] else "idle"
        if w["kind"] in hc.UNDETECTABLE and not any(x["restarted"] for x in rows):
            print(f"  {w['kind']:16} {load:6} {'not detected':>17} {'-':>18}  {'0':10}  0 (by design: see test_harm)")
            continue
        if w["kind"] in hc.SELF_HEALING and not any(x["restarted"] for x in rows):
            killed = ",".join(str(x["killed"]) for x in rows) if w["loaded"] else "-"
            print(f"  {w['kind']:16} {load:6} {'no restart':>17} {'Ollama reloads':>18}  {killed:10}  0 (wanted)")
            continue
        detect = [x["detect"] for x in rows if x["detect"] is not None]
        recover = [x["recover"] for x in rows if x["recover"] is not None]
        killed = ",".join(str(x["killed"]) for x in rows) if w["loaded"] else "-"
        missed = sum(not x["restarted"] for x in rows)
        restarts = ",".join(str(x["restarts"]) for x in rows)
        print(
            f"  {w['kind']:16} {load:6} {_stat(detect):>17} {_stat(recover):>18}  {killed:10}"
            f"  {restarts}" + (f"  ({missed} run(s) NOT recovered)" if missed else "")
        )
    if r["harm"] or "stop" in r:
        print("  false restarts (goal 0) and failed requests (goal 0):")
    for x in r["harm"]:
        reqs = sum(int(s.get("requests") or 0) for s in x["loads"])
        print(
            f"    {x['case']} ({x['seconds']:g} s): restarts {x['restarts']}, requests {reqs}, failed {x['failed']}"
            f"  [{x['restart_counts']}; verdicts {x['verdicts'] or 'none logged'}]"
        )
    if "stop" in r:
        s = r["stop"]
        print(
            f"    systemctl stop held {s['seconds']:g} s: starts {s['starts']}, states {s['states']},"
            f" alice's restart exit {s['restart_exit']} (goal 14), probe {s['probe']}"
        )
    if "soak" in r:
        k = r["soak"]
        unit = "?" if k["unit_cpu_pct"] is None else f"{k['unit_cpu_pct']:.2f} %"
        print(
            f"  watchdog over {args.soak:g} s, a model loaded: RSS {k['rss_mib']:.1f} MiB, CPU {k['cpu_pct']:.2f} %"
            f" (its unit, with journalctl children: {unit}) (goals <= 30 MiB, <= 0.5 %)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", choices=(*testbed.SUITES, "all"))
    parser.add_argument("--runs", type=int, default=3, help="runs per wedge kind and load (default 3)")
    parser.add_argument(
        "--saturated", type=float, default=hc.SATURATED_SECONDS, help="saturated load, seconds (default 120)"
    )
    parser.add_argument(
        "--stream", type=float, default=hc.STREAM_SECONDS, help="the one streamed generation, seconds (default 180)"
    )
    parser.add_argument("--load", type=float, default=hc.LOAD_SECONDS, help="each model load, seconds (default 60)")
    parser.add_argument("--stop", type=float, default=hc.STOP_SECONDS, help="how long a stop is held (default 60)")
    parser.add_argument("--soak", type=float, default=60, help="watchdog RSS/CPU soak, seconds; 0: skip")
    parser.add_argument(
        "--cases",
        default="wedges,harm,stop,soak",
        type=lambda v: set(v.split(",")),
        help="which parts to run, comma-separated (default: wedges,harm,stop,soak)",
    )
    parser.add_argument(
        "--runner",
        default="simulated",
        choices=("simulated", "llama-server"),
        help="the stand-in's simulated runner, or the real llama-server (releases that package it: sid)",
    )
    parser.add_argument("--deb", help="the .deb to install (default: build it, cached by source hash)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args()

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    suites = testbed.SUITES if args.suite == "all" else (args.suite,)
    if args.runner == "llama-server":
        suites = tuple(s for s in suites if testbed.has_real_runner(s))
        if not suites:
            parser.error("--runner llama-server needs a release that packages llama.cpp: --suite sid")
    results = [run_suite(suite, args, log) for suite in suites]
    for r in results:
        print_suite(r, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
