"""Late detectors skip on PID 1's own record, without D-Bus (issue 16 §4), on each release's real systemd.

What unitrecord relies on is checked here, not taken from systemd's source: the record
(/run/systemd/units/invocation:UNIT) is made as a start begins, no later than InactiveExitTimestamp,
kept across daemon-reload and daemon-reexec, removed on stop; its directories are root's alone.
"""

from __future__ import annotations

import time

from tests.e2e.conftest import UNIT, Bed
from tests.e2e.test_recovery import detectors, load_model, report, wedge

RECORD = f"/run/systemd/units/invocation:{UNIT}"
URL = "http://127.0.0.1:11434"
NO_BUS = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"}  # any D-Bus call would fail: BusUnavailable


def _record(bed: Bed) -> tuple[str, float] | None:
    """(target, lstat mtime) of the record, or None."""
    r = bed.c.run(["stat", "-c", "%U %F %.6Y %N", RECORD])
    if r.returncode != 0:
        return None
    owner, rest = r.stdout.split(" ", 1)
    assert owner == "root" and rest.startswith("symbolic link "), r.stdout
    mtime = float(rest.split()[2])
    return r.stdout.strip().rsplit("'", 2)[-2], mtime


def _inactive_exit(bed: Bed) -> float:
    """InactiveExitTimestamp in epoch seconds with its microseconds (the wall-clock form prints whole seconds
    on some releases): systemd's CLOCK_MONOTONIC stamp, turned into wall-clock time as the container sees it."""
    mono = int(bed.prop("InactiveExitTimestampMonotonic")) / 1e6
    offset = bed.python("import time; print(time.time() - time.monotonic())", user="root").stdout
    return mono + float(offset)


def test_pid1s_record_is_what_the_short_way_relies_on(healthy: Bed):
    """Made as a start begins (never after InactiveExitTimestamp), kept across reload/reexec, gone on stop."""
    c = healthy.c
    for d in ("/run", "/run/systemd", "/run/systemd/units"):
        assert c.run(["stat", "-c", "%U %a", d], check=True).stdout.split() in (["root", "755"],), d
    assert c.run(["ln", "-s", "f" * 32, "/run/systemd/units/invocation:x.service"], user="alice").returncode != 0
    before = time.time()
    c.run(["systemctl", "restart", UNIT], check=True)
    target, mtime = _record(healthy) or ("", 0.0)
    assert target == healthy.prop("InvocationID") and before < mtime <= _inactive_exit(healthy) + 0.001
    for how in ("daemon-reload", "daemon-reexec"):
        c.run(["systemctl", how], check=True)
        time.sleep(0.5)
        assert _record(healthy) == (target, mtime), how
    c.run(["systemctl", "stop", UNIT], check=True)
    try:
        assert _record(healthy) is None
        rc, out = healthy.json("restart", "--since", str(mtime - 5), "--url", URL, "--no-wait", env=NO_BUS)
        assert rc != 0 and out["error"] == "bus-unavailable"  # no record: D-Bus, never a "skip"
    finally:
        healthy.recover()


def test_a_late_detector_skips_without_dbus_and_a_fresh_one_restarts(healthy: Bed):
    seen = wedge(healthy, "full")
    rc, first = healthy.json("restart", "--since", str(seen), "--url", URL)
    assert rc == 0 and first["action"] == "restarted"
    for extra in (["--no-wait"], []):  # no bus at all: skipped, and with the wait, Ollama answered
        rc, out = healthy.json("restart", "--since", str(seen), "--url", URL, *extra, env=NO_BUS)
        assert rc == 0 and out["action"] == "skipped" and out["new_invocation_id"] == first["new_invocation_id"], out
    assert out["api_version"] and out["ready_seconds"] is not None
    rc, out = healthy.json("restart", "--since", str(seen), env=NO_BUS)  # URL from the unit: D-Bus
    assert rc != 0 and out["error"] == "bus-unavailable"
    rc, out = healthy.json("restart", "--since", str(time.time() + 1), "--url", URL, "--no-wait", env=NO_BUS)
    assert rc != 0 and out["error"] == "bus-unavailable"  # a fresh detector: PID 1 restarts, not the record


def test_100_concurrent_detectors_naming_the_url(healthy: Bed):
    """An app's 100 workers, each with the URL it saw wedged: one restart, 99 skip on PID 1's record."""
    load_model(healthy)
    seen = wedge(healthy, "deep")
    before = healthy.prop("InvocationID")
    results, elapsed = detectors(healthy, seen, "--url", URL)
    actions = sorted(o.get("action", o.get("error")) for o in results)
    assert actions.count("restarted") == 1 and actions.count("skipped") == 99, actions
    assert len({o["new_invocation_id"] for o in results} | {before}) == 2
    report(healthy, "100 concurrent detectors naming the URL (PID 1's record): restarts", 1,
           f"all 100 returned in {elapsed:.1f}s")  # fmt: skip
