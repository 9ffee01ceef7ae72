"""Wedge detection and safe recovery on booted Debian 12 and 13: probes, coalescing, budget, audit.

Each case that recovers from a fault prints its detection and recovery times
(see the "recovery timings" section at the end of the pytest report).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import UNIT, Bed
from tests.e2e.test_restart import model_fields

BUDGET, WEDGED, DEEP_WEDGED, DOWN, STARTING, STOPPED = 8, 11, 12, 10, 13, 14

# The stand-in's process wedges, cleared by a restart like a real one:
#   full  SIGUSR2, "silent": the whole server accepts and never answers (/api/version too);
#   deep  SIGUSR1, "stuck-inference" (#15950): /api/version answers, each runner's /health
#         answers, its /slots (the main loop) hangs, generate never finishes.
WEDGE_SIGNAL = {"deep": "USR1", "full": "USR2"}
MODEL = "standin"
DEEP_CONFIRM = 8.0  # README: deep-wedged = /slots silent for deep_confirm (8 s) with no request completing
# README "Probes": a probe run by hand confirms its verdict over a few samples before it answers,
# taking up to deep_confirm (8 s).
PROBE_BOUND = DEEP_CONFIRM
PROBE_MARGIN = 3.0  # stated margin, as for the watchdog's figures: process start-up and a busy 2-core host


def load_model(bed: Bed, model: str = MODEL) -> None:
    """Load ``model`` with a real request (the deep probe never loads one); it then has a runner."""
    code = (
        "import json, urllib.request\n"
        f"body = json.dumps({{'model': {model!r}, 'prompt': 'hi', 'stream': False}}).encode()\n"
        "urllib.request.urlopen('http://127.0.0.1:11434/api/generate', body, timeout=30).read()\n"
    )
    r = bed.python(code, user="root")
    assert r.returncode == 0, r.stderr
    assert model + ":latest" in loaded(bed)


def loaded(bed: Bed) -> list[str]:
    """The models /api/ps lists."""
    code = (
        "import json, urllib.request\n"
        "ps = json.load(urllib.request.urlopen('http://127.0.0.1:11434/api/ps', timeout=5))\n"
        "print(json.dumps([m['name'] for m in ps['models']]))\n"
    )
    r = bed.python(code, user="root")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wedge(bed: Bed, kind: str) -> float:
    """Wedge the running stand-in process (a restart clears it); return when."""
    bed.c.sh(f"kill -{WEDGE_SIGNAL[kind]} $(systemctl show -p MainPID --value {UNIT})", check=True)
    time.sleep(0.3)  # the stand-in applies a wedge within 0.2 s
    return time.time()


@pytest.mark.parametrize(
    ("kind", "deep", "outcome", "code"),
    [
        (None, False, "healthy", 0),
        (None, True, "healthy", 0),  # the runner answers /slots
        ("full", False, "wedged", WEDGED),
        ("full", True, "wedged", WEDGED),
        ("deep", False, "healthy", 0),  # /api/version is static: a deep wedge fools the liveness probe...
        ("deep", True, "deep-wedged", DEEP_WEDGED),  # ...the runner's silent /slots does not
    ],
)
def test_probe_outcomes(healthy: Bed, kind, deep, outcome, code):
    load_model(healthy)
    if kind:
        wedge(healthy, kind)
    args = ["probe", "--model", MODEL] + (["--deep"] if deep else [])
    t0 = time.monotonic()
    try:
        rc, out = healthy.json(*args, env={"OLLAMACTL_WATCH_STARTUP_GRACE": "0"})
    finally:
        elapsed = time.monotonic() - t0
        if kind:  # a process wedge outlives the test (the API may still answer): a restart clears it
            healthy.recover()
    assert (rc, out["outcome"], out["exit_code"]) == (code, outcome, code), out
    assert sorted(out) == model_fields(healthy, "ProbeReport")
    assert out["evidence"], out  # every verdict names what decided it
    assert elapsed < PROBE_BOUND + PROBE_MARGIN, (elapsed, out)
    if outcome == "deep-wedged":
        # confirmed from evidence of no progress over deep_confirm, never from one slow answer
        assert out["confirmed"] and elapsed >= DEEP_CONFIRM - 1, (elapsed, out)
    if kind:
        report(healthy, f"probe{' --deep' if deep else ''} of a {kind} wedge", f"{outcome} in {elapsed:.1f}s")


def test_probe_stopped_and_starting(healthy: Bed):
    healthy.c.run(["systemctl", "stop", UNIT], check=True)
    rc, out = healthy.json("probe")
    assert (rc, out["outcome"], out["active_state"]) == (STOPPED, "stopped", "inactive"), out
    healthy.set_mode("slow-start=3")
    healthy.c.run(["systemctl", "start", UNIT], check=True)
    rc, out = healthy.json("probe")
    assert (rc, out["outcome"]) == (STARTING, "starting"), out


def test_deep_probe_of_a_model_that_is_not_loaded_loads_nothing_and_is_no_wedge(healthy: Bed):
    load_model(healthy)
    before = loaded(healthy)
    rc, out = healthy.json("probe", "--deep", "--model", "standin2")  # installed, not loaded
    assert (rc, out["outcome"]) == (0, "healthy"), out
    assert "not loaded" in out["evidence"] + out["detail"], out
    assert loaded(healthy) == before  # read-only: the probe neither loaded standin2 nor evicted standin


def test_since_skips_when_the_unit_started_after_the_wedge(healthy: Bed):
    seen = time.time() - 60  # the wedge was seen before the current start
    before = healthy.prop("InvocationID")
    rc, out = healthy.json("restart", "--since", str(seen))
    assert rc == 0 and out["action"] == "skipped" and out["new_invocation_id"] == before
    assert healthy.prop("InvocationID") == before
    rc, out = healthy.json("restart", "--since", "2999-01-01T00:00:00+00:00")  # seen "now": restart
    assert rc == 0 and out["action"] == "restarted" and out["new_invocation_id"] != before


def test_100_concurrent_detectors_cause_exactly_one_restart(healthy: Bed):
    load_model(healthy)
    seen = wedge(healthy, "deep")
    before = (healthy.prop("InvocationID"), healthy.prop("NRestarts"))
    results, elapsed = detectors(healthy, seen)
    assert len(results) == 100, results[-20:]
    actions = sorted(o.get("action", o.get("error")) for o in results)
    odd = [o for o in results if o.get("action") not in ("restarted", "skipped")]
    assert actions.count("restarted") == 1 and actions.count("skipped") == 99, odd
    assert all(o.get("exit_code", 0) == 0 and o["ok"] for o in results)
    inv = {o["new_invocation_id"] for o in results}
    assert len(inv) == 1 and inv != {before[0]}
    assert healthy.prop("NRestarts") == before[1]  # our restart is not an automatic one, and no others happened
    report(healthy, "100 concurrent detectors: restarts", 1, f"all 100 returned in {elapsed:.1f}s")


def detectors(bed: Bed, seen: float, *extra: str, n: int = 100) -> tuple[list[dict], float]:
    """Run ``n`` concurrent ``ollamactl restart --since seen`` as alice; their JSON answers, and how long all took."""
    t0 = time.monotonic()
    script = (
        f"for i in $(seq {n}); do ollamactl restart --json --since {seen} {' '.join(extra)} --reason detector-$i"
        " > /tmp/det.$i 2>&1 & done; wait; cat /tmp/det.*; rm -f /tmp/det.*"
    )
    r = bed.c.run(["/bin/sh", "-c", script], user="alice", timeout=300)
    elapsed = time.monotonic() - t0
    return [json.loads(line) for line in r.stdout.splitlines()], elapsed


def test_budget_stops_a_restart_loop_and_says_when(healthy: Bed):
    saved = healthy.saved_config()
    healthy.c.write_file("/etc/ollamactl/config.toml", "max_restarts = 2\nrestart_window = 60\nrestart_backoff = 0\n")
    try:
        assert healthy.json("restart")[0] == 0
        assert healthy.json("restart")[0] == 0
        before = healthy.prop("InvocationID")
        rc, out = healthy.json("restart")
    finally:
        healthy.restore_config(saved)
    assert rc == BUDGET and out["error"] == "budget-exhausted"
    assert 0 < out["retry_after"] <= 60 and "next is allowed at" in out["message"]
    assert healthy.prop("InvocationID") == before


def test_budget_backoff_between_consecutive_restarts(healthy: Bed):
    assert healthy.json("restart")[0] == 0
    rc, out = healthy.json("restart")
    assert rc == BUDGET and 0 < out["retry_after"] <= 10


def test_budget_tolerates_a_corrupt_state_file(healthy: Bed):
    healthy.c.write_file("/run/ollamactl/state.json", "{not json", mode=0o660)
    rc, out = healthy.json("restart")
    assert rc == 0 and out["action"] == "restarted"
    state = json.loads(healthy.c.run(["cat", "/run/ollamactl/state.json"], check=True).stdout)
    assert [r["unit"] for r in state["restarts"]] == [UNIT]


def test_every_restart_decision_is_in_the_journal(healthy: Bed):
    tag = f"audit-{time.time_ns()}"
    seen = time.time() - 30
    assert healthy.json("restart", "--reason", f"{tag} first")[0] == 0
    assert healthy.json("restart", "--since", str(seen), "--reason", f"{tag} late detector")[0] == 0
    assert healthy.ollamactl("restart", "--reason", f"{tag} bob", user="bob").returncode == 3
    entries = []
    for who in ("first", "late detector", "bob"):
        j = healthy.c.run(
            ["journalctl", "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=ollamactl", f"OLLAMACTL_REASON={tag} {who}"],
            check=True,
        )
        entries += [json.loads(line) for line in j.stdout.splitlines()]
    by_outcome = {e["OLLAMACTL_OUTCOME"]: e for e in entries}
    assert sorted(by_outcome) == ["permission-denied", "restarted", "skipped"], entries
    done = by_outcome["restarted"]
    assert done["OLLAMACTL_USER"] == "alice" and done["OLLAMACTL_UNIT"] == UNIT
    assert done["OLLAMACTL_UID"] == done["_UID"] and done["OLLAMACTL_PID"] == done["_PID"]
    assert done["OLLAMACTL_NEW_INVOCATION"] == healthy.prop("InvocationID")
    assert float(by_outcome["skipped"]["OLLAMACTL_OBSERVED_AT"]) == pytest.approx(seen, abs=0.01)
    assert by_outcome["permission-denied"]["OLLAMACTL_USER"] == "bob"


def report(bed: Bed, case: str, *values) -> None:
    """Collect a line for the timing summary printed at the end of the run."""
    from tests.e2e import conftest

    conftest.TIMINGS.append(f"{bed.suite:9} {case}: " + " ".join(str(v) for v in values))
