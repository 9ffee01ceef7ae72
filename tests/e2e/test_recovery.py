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

BUDGET, WEDGED, DEEP_WEDGED, DOWN, STARTING = 8, 11, 12, 10, 13

WEDGE_SIGNAL = {"deep": "USR1", "full": "USR2"}  # stand-in: hang generate / hang everything, until it exits


def wedge(bed: Bed, kind: str) -> float:
    """Wedge the running stand-in process (a restart clears it); return when."""
    bed.c.sh(f"kill -{WEDGE_SIGNAL[kind]} $(systemctl show -p MainPID --value {UNIT})", check=True)
    return time.time()


@pytest.mark.parametrize(
    ("kind", "deep", "outcome", "code"),
    [
        (None, False, "healthy", 0),
        (None, True, "healthy", 0),
        ("full", False, "wedged", WEDGED),
        ("deep", False, "healthy", 0),  # /api/version is static: a deep wedge fools the liveness probe...
        ("deep", True, "deep-wedged", DEEP_WEDGED),  # ...the deep probe sees it
    ],
)
def test_probe_outcomes(healthy: Bed, kind, deep, outcome, code):
    if kind:
        wedge(healthy, kind)
    args = ["probe", "--model", "standin"] + (["--deep"] if deep else [])
    t0 = time.monotonic()
    rc, out = healthy.json(*args, env={"OLLAMACTL_WATCH_STARTUP_GRACE": "0"})
    assert (rc, out["outcome"], out["exit_code"]) == (code, outcome, code), out
    assert sorted(out) == model_fields(healthy, "ProbeReport")
    assert time.monotonic() - t0 < 2 + 30 + 5  # probe_timeout + deep_timeout bound it


def test_probe_down_and_starting(healthy: Bed):
    healthy.c.run(["systemctl", "stop", UNIT], check=True)
    rc, out = healthy.json("probe")
    assert (rc, out["outcome"], out["active_state"]) == (DOWN, "down", "inactive")
    healthy.set_mode("slow-start=3")
    healthy.c.run(["systemctl", "start", UNIT], check=True)
    rc, out = healthy.json("probe")
    assert (rc, out["outcome"]) == (STARTING, "starting"), out


def test_deep_probe_of_a_missing_model_is_a_config_error_not_a_wedge(healthy: Bed):
    rc, out = healthy.json("probe", "--deep", "--model", "llama-not-pulled")
    assert rc == 2 and out["error"] == "probe-config" and "ollama list" in out["message"]


def test_since_skips_when_the_unit_started_after_the_wedge(healthy: Bed):
    seen = time.time() - 60  # the wedge was seen before the current start
    before = healthy.prop("InvocationID")
    rc, out = healthy.json("restart", "--since", str(seen))
    assert rc == 0 and out["action"] == "skipped" and out["new_invocation_id"] == before
    assert healthy.prop("InvocationID") == before
    rc, out = healthy.json("restart", "--since", "2999-01-01T00:00:00+00:00")  # seen "now": restart
    assert rc == 0 and out["action"] == "restarted" and out["new_invocation_id"] != before


def test_100_concurrent_detectors_cause_exactly_one_restart(healthy: Bed):
    seen = wedge(healthy, "deep")
    before = (healthy.prop("InvocationID"), healthy.prop("NRestarts"))
    t0 = time.monotonic()
    script = (
        f"for i in $(seq 100); do ollamactl restart --json --since {seen} --reason detector-$i > /tmp/det.$i 2>&1 &"
        " done; wait; cat /tmp/det.*"
    )
    r = healthy.c.run(["/bin/sh", "-c", script], user="alice", timeout=300)
    elapsed = time.monotonic() - t0
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == 100, r.stdout[-2000:]
    actions = sorted(o.get("action", o.get("error")) for o in results)
    assert actions.count("restarted") == 1 and actions.count("skipped") == 99, actions
    assert all(o.get("exit_code", 0) == 0 and o["ok"] for o in results)
    inv = {o["new_invocation_id"] for o in results}
    assert len(inv) == 1 and inv != {before[0]}
    assert healthy.prop("NRestarts") == before[1]  # our restart is not an automatic one, and no others happened
    report(healthy, "100 concurrent detectors: restarts", 1, f"all 100 returned in {elapsed:.1f}s")


def test_budget_stops_a_restart_loop_and_says_when(healthy: Bed):
    healthy.c.write_file("/etc/ollamactl/config.toml", "max_restarts = 2\nrestart_window = 60\nrestart_backoff = 0\n")
    try:
        assert healthy.json("restart")[0] == 0
        assert healthy.json("restart")[0] == 0
        before = healthy.prop("InvocationID")
        rc, out = healthy.json("restart")
    finally:
        healthy.c.run(["rm", "-f", "/etc/ollamactl/config.toml"], check=True)
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
