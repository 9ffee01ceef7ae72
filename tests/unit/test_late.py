"""Late detectors skip without D-Bus on PID 1's own record, and only on a record root alone can have made.

The record (/run/systemd/units/invocation:UNIT, a root-owned symlink to the invocation ID) is made in a
root-owned directory under /run here, as PID 1 makes it; how systemd really keeps it (made as a start
begins, removed on stop/failure, kept across daemon-reload/-reexec) is checked in booted containers by
tests/e2e/test_late_detectors.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from ollamactl import late, unitrecord
from tests.unit.test_restart_flow import make, wire  # noqa: F401 - the fixture

UNIT = "ollama.service"
INV = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def records(monkeypatch):
    """A root-owned records directory under /run (0755 all the way up), which unitrecord reads."""
    if os.geteuid() != 0 or not os.access("/run", os.W_OK):
        pytest.skip("needs root (a root-owned directory outside /tmp)")
    top = Path(tempfile.mkdtemp(dir="/run", prefix="ollamactl-test-"))
    top.chmod(0o755)
    units = top / "units"
    units.mkdir(mode=0o755)
    monkeypatch.setattr(unitrecord, "UNITS_DIR", str(units))
    try:
        yield units
    finally:
        shutil.rmtree(top)


def record(units: Path, inv: str = INV, unit: str = UNIT) -> Path:
    path = units / f"invocation:{unit}"
    path.unlink(missing_ok=True)
    path.symlink_to(inv)
    return path


def test_pid1s_record_gives_the_invocation_and_when_it_began(records):
    t0 = time.time()
    record(records)
    run = unitrecord.current(UNIT)
    assert run is not None and run.invocation_id == INV and t0 - 0.01 <= run.started_at <= time.time() + 0.01
    assert unitrecord.started_since(UNIT, t0 - 1) == run and unitrecord.started_since(UNIT, time.time() + 1) is None
    assert unitrecord.current("other.service") is None


@pytest.mark.parametrize(
    "forge",
    [
        "a directory others may write",
        "a directory above it others may write",
        "a record owned by a user",
        "a regular file",
        "a FIFO",
        "a target that is no invocation ID",
        "a unit name with a slash",
    ],
)
def test_a_record_root_alone_could_not_have_made_is_not_trusted(records, forge):
    """Anything but PID 1's shape, in root's directories, is "don't know" (D-Bus then), never "skip"."""
    path = record(records)
    unit = UNIT
    if forge == "a directory others may write":
        records.chmod(0o777)
    elif forge == "a directory above it others may write":
        records.parent.chmod(0o1777)  # sticky, as /tmp: anyone may still add a directory there
    elif forge == "a record owned by a user":
        os.lchown(path, 65534, 65534)
    elif forge == "a regular file":
        path.unlink()
        path.write_text(INV)
    elif forge == "a FIFO":
        path.unlink()
        os.mkfifo(path)  # never opened: lstat and readlink only, so nothing blocks
    elif forge == "a target that is no invocation ID":
        record(records, inv="../../../home/alice/x")
    else:
        unit = "../units/invocation:" + UNIT
    t0 = time.monotonic()
    assert unitrecord.current(unit) is None and unitrecord.started_since(unit, 0) is None
    assert time.monotonic() - t0 < 1


def test_a_late_detector_skips_without_touching_the_bus(records, wire):  # noqa: F811
    """The unit started after the wedge was seen: "skipped", and PID 1 is not asked (no D-Bus message)."""
    _, systemd, ollama = wire
    seen = systemd.started_at - 5  # the fake PID 1 agrees: a start after the wedge was seen
    record(records)
    result = asyncio.run(make(wire).restart("late", wait=False, observed_at=seen))
    assert result.action == "skipped" and result.new_invocation_id == INV and systemd.calls == []
    # with a URL the caller named, it waits for the API too, still without the bus
    result = asyncio.run(make(wire, url=ollama.url).restart("late", observed_at=seen))
    assert result.action == "skipped" and result.api_version == "0.12.3" and systemd.calls == []
    assert result.ready_seconds is not None
    # the URL is the unit's to say (none named): D-Bus, as before
    result = asyncio.run(make(wire).restart("late", observed_at=seen))
    assert result.action == "skipped" and systemd.calls[0] == "GetAll" and systemd.jobs == []


def test_a_record_older_than_the_wedge_or_none_means_the_bus(records, wire):  # noqa: F811
    """A fresh detector (the run began before it saw the wedge), or no record: the D-Bus path restarts."""
    _, systemd, ollama = wire
    record(records)
    result = asyncio.run(make(wire, url=ollama.url).restart("fresh", wait=False, observed_at=time.time() + 1))
    assert result.action == "queued" and systemd.jobs == ["TryRestartUnit"]
    (records / f"invocation:{UNIT}").unlink()  # stopped, or failed: PID 1 removed the record
    systemd.calls.clear()
    result = asyncio.run(make(wire, url=ollama.url).restart("late", wait=False, observed_at=systemd.started_at - 5))
    assert result.action == "skipped" and systemd.calls[0] == "GetAll"  # PID 1 asked over D-Bus


def test_a_unit_that_stops_while_the_late_detector_waits_is_judged_over_the_bus(records, wire):  # noqa: F811
    """The record goes (stopped/failed) while Ollama does not answer yet: no "skipped", D-Bus says what it is."""
    _, systemd, ollama = wire
    ollama.set_mode("refused")
    path = record(records)

    async def stop_soon() -> None:
        await asyncio.sleep(0.2)
        path.unlink()

    async def run():
        stopper = asyncio.create_task(stop_soon())
        skipped = await late.skip(make(wire, url=ollama.url).config, "late", time.time() - 5, wait=True, timeout=3,
                                  transport=ollama)  # fmt: skip
        await stopper
        return skipped

    t0 = time.monotonic()
    assert asyncio.run(run()) is None and time.monotonic() - t0 < 1.5


NEW = "fedcba9876543210fedcba9876543210"


class Version:
    """A real HTTP server on 127.0.0.1 answering GET /api/version, as Ollama does (for the blocking wait)."""

    def __enter__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                body = b'{"version": "0.12.3"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def in_thread(fn):
    """Run ``fn`` in a thread; (thread, box) where box["out"] is its result or box["err"] its exception."""
    import threading

    box: dict = {}

    def go():
        try:
            box["out"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            box["err"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def wedged_run(records: Path) -> float:
    """PID 1's record of the run that wedged, then when the wedge was seen (after it): that run is stale."""
    record(records, INV)
    seen = time.time() + 0.01
    time.sleep(0.02)
    return seen


def test_of_many_late_detectors_the_first_holds_the_lock_and_the_others_skip_once_it_lets_go(records, wire):  # noqa: F811
    """The first takes the lock before importing the bus; the others wait, then skip on PID 1's new record."""
    _, systemd, _ = wire
    seen = wedged_run(records)
    with Version() as api:
        cfg = make(wire, url=api.url).config
        first = late.run(cfg, "worker 1", seen, wait=True, timeout=5)
        assert first.skipped is None and first.lock is not None  # the lock was free: this one restarts
        t, box = in_thread(lambda: late.run(cfg, "worker 2", seen, wait=True, timeout=5))
        time.sleep(0.3)
        assert t.is_alive()  # waiting for the holder, not off to D-Bus
        record(records, NEW)  # the holder's restart: PID 1 records the new run
        first.release()
        t.join(5)
    turn = box["out"]
    assert turn.lock is None and turn.skipped is not None and turn.skipped.action == "skipped"
    assert turn.skipped.new_invocation_id == NEW and turn.skipped.api_version == "0.12.3"  # it waited for the API
    assert systemd.calls == []  # neither asked PID 1


def test_a_holder_that_did_not_restart_sends_the_waiters_to_the_bus(records, wire):  # noqa: F811
    seen = wedged_run(records)
    cfg = make(wire).config
    first = late.run(cfg, "worker 1", seen, wait=False, timeout=5)
    t, box = in_thread(lambda: late.run(cfg, "worker 2", seen, wait=False, timeout=5))
    time.sleep(0.2)
    first.release()  # e.g. its budget was used up: no new record
    t.join(5)
    assert box["out"].skipped is None and box["out"].lock is None  # the D-Bus path judges, and takes the lock itself


def test_a_holder_that_keeps_the_lock_times_the_waiters_out_with_the_way_to_see_it(records, wire):  # noqa: F811
    from ollamactl.errors import TimedOut

    seen = wedged_run(records)
    cfg = make(wire).config
    first = late.run(cfg, "worker 1", seen, wait=False, timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimedOut, match="lslocks"):
            late.run(cfg, "worker 2", seen, wait=False, timeout=0.5)
        assert 0.5 <= time.monotonic() - t0 < 1.5
    finally:
        first.release()


def test_the_lock_taken_before_the_bus_is_the_one_the_restart_holds_and_lets_go(records, wire):  # noqa: F811
    """Handed to the controller: it restarts under it at once (a second flock here would wait), then frees it."""
    _, systemd, _ = wire
    seen = wedged_run(records)
    ctl = make(wire, timeout=2)
    first = late.run(ctl.config, "worker 1", seen, wait=False, timeout=2)
    result = asyncio.run(ctl.restart("worker 1", wait=False, observed_at=seen, lock=first.lock))
    assert result.action == "queued" and systemd.jobs == ["TryRestartUnit"]
    again = late.run(ctl.config, "worker 3", time.time() + 1, wait=False, timeout=0.2)  # free again at once
    assert again.lock is not None
    again.release()


def test_a_late_detectors_failures_on_the_short_way_are_journaled_as_the_bus_paths_are(records, wire, monkeypatch):  # noqa: F811
    """Restarted, but Ollama never answers: TimedOut, and the decision is in the journal (``history`` shows it)."""
    from ollamactl.errors import TimedOut

    recorded: list[dict] = []
    monkeypatch.setattr(late, "audit", lambda message, **fields: recorded.append(fields))
    record(records, NEW)
    with Version() as api:
        url = api.url
    cfg = make(wire, url=url).config  # nothing listens there any more
    with pytest.raises(TimedOut, match="did not answer"):
        late.run(cfg, "worker", time.time() - 5, wait=True, timeout=0.3)
    assert [(f["outcome"], f["reason"]) for f in recorded] == [("timeout", "worker")]
