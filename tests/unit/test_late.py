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
