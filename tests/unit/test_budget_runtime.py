"""Restart budget arithmetic, the shared lock across processes, and the state file.

(The attacks on the runtime directory are in test_runtime_attacks.py.)
"""

import asyncio
import grp
import json
import multiprocessing
import os
import socket
import struct
import time

import pytest

from ollamactl.budget import Budget
from ollamactl.errors import RuntimeDirError, TimedOut
from ollamactl.journal import Journal, encode, field_name
from ollamactl.runtime import RUN_DIR_MODE, STATE_MODE, Restart, RuntimeDir, State

B = Budget(max_restarts=3, window=600, backoff=10)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the runtime directory is root-owned")


@pytest.fixture
def rundir(tmp_path):
    """A runtime directory as tmpfiles makes it: root, an existing group (the host is not changed), 2770."""
    group = next((g for g in grp.getgrall() if g.gr_name in ("ollamactl", "daemon", "adm", "users")), None)
    if group is None:
        pytest.skip("no suitable group on this host")
    path = tmp_path / "run"
    path.mkdir()
    os.chown(path, 0, group.gr_gid)
    os.chmod(path, RUN_DIR_MODE)
    return RuntimeDir(path, group.gr_name)


@pytest.mark.parametrize(
    ("history", "now", "allowed"),
    [
        ([], 1000, 1000),  # nothing yet: now
        ([995], 1000, 1005),  # first gap: backoff
        ([900], 1000, 1000),  # gap long past
        ([980, 995], 1000, 1015),  # second restart in the window: gap doubles
        ([500, 980, 995], 1000, 1100),  # three in the window: wait until the oldest leaves it
        ([300, 350, 380], 1000, 1000),  # all outside the window
    ],
)
def test_next_allowed(history, now, allowed):
    assert B.next_allowed(history, now) == allowed


def test_default_budget_stays_far_below_systemd_start_limit():
    # systemd's default StartLimitBurst is 5 starts per 10 s; ours never allows 2 in 10 s.
    budget = Budget()
    history: list[float] = []
    t = 0.0
    for _ in range(20):
        t = max(t, budget.next_allowed(history, t))
        history.append(t)
    starts_per_10s = max(sum(1 for h in history if s <= h < s + 10) for s in history)
    assert starts_per_10s == 1 and budget.max_restarts < 5


@needs_root
def test_state_roundtrip_and_tolerance(rundir):
    rd = rundir
    assert rd.read_state().restarts == []  # missing file
    rd.write_state(State([Restart(at=1.5, unit="ollama.service", uid=1, pid=2, reason="r")]))
    assert rd.read_state().restarts[0].reason == "r"
    assert os.stat(rd.state_path).st_mode & 0o7777 == STATE_MODE == 0o660
    assert os.listdir(rd.path) == ["state.json"]  # no lock file, no temporary file left
    for junk in ("{not json", "[]", '{"version": 99, "restarts": []}', '{"version": 1, "restarts": [{"x": 1}]}'):
        rd.state_path.write_text(junk)
        assert rd.read_state().restarts == []


def test_missing_dir_says_how_to_create_it(tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(RuntimeDirError, match=f"does not exist; an admin can create it: sudo install -d .* {absent}"):
        RuntimeDir(absent, "root").check_writable()  # (an existing group: a missing group is reported first)
    with pytest.raises(RuntimeDirError, match="group no-such-group does not exist.*sudo groupadd --system no-such"):
        RuntimeDir(absent, "no-such-group").check_writable()


def _hold(rd, seconds, ready):
    async def run():
        async with rd.lock(5):
            ready.set()
            await asyncio.sleep(seconds)

    asyncio.run(run())


@needs_root
def test_lock_serialises_processes_and_is_released_when_the_holder_dies(rundir):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(rundir, 60, ready))
    holder.start()
    assert ready.wait(10)

    async def try_lock(timeout):
        async with RuntimeDir(rundir.path, rundir.group).lock(timeout) as held:
            assert held
            return time.monotonic()

    with pytest.raises(TimedOut, match=f"held the restart lock on {rundir.path} .*lslocks") as caught:
        asyncio.run(try_lock(0.3))
    assert caught.value.exit_code == 7
    holder.kill()  # a crashed holder: the kernel drops its flock
    holder.join()
    t0 = time.monotonic()
    assert asyncio.run(try_lock(2)) - t0 < 0.5
    assert asyncio.run(try_lock(0.1)) > 0  # and leaving the block (closing the directory) released ours


@needs_root
def test_the_watchdogs_lock_wait_ends_without_the_lock(rundir):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(rundir, 60, ready))
    holder.start()
    assert ready.wait(10)

    async def try_lock():
        async with RuntimeDir(rundir.path, rundir.group).lock(0.2, required=False) as held:
            return held

    try:
        t0 = time.monotonic()
        assert asyncio.run(try_lock()) is False and time.monotonic() - t0 < 1
    finally:
        holder.kill()
        holder.join()


def test_journal_native_protocol_encoding():
    assert field_name("observed_at") == "OBSERVED_AT" and field_name("_x-y") == "X_Y"
    data = encode({"MESSAGE": "two\nlines", "A": 1, "SKIP": None})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nA=1\n"


def test_journal_sends_a_datagram_and_falls_back_to_stderr(tmp_path, capfd):
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    assert Journal(path).send("hello", 4, reason="x") is True
    got = server.recv(65536)
    assert b"MESSAGE=hello\n" in got and b"PRIORITY=4\n" in got and b"REASON=x\n" in got
    assert b"SYSLOG_IDENTIFIER=ollamactl\n" in got
    server.close()
    os.unlink(path)
    assert Journal(path).send("fallback", 3, reason="y") is False
    assert capfd.readouterr().err == "<3>ollamactl: fallback REASON=y\n"


@needs_root
def test_state_file_is_json_a_human_can_read(rundir):
    rd = rundir
    rd.write_state(State([Restart(at=2.0, unit="u.service", uid=0, pid=1)]))
    assert json.loads(rd.state_path.read_text())["restarts"][0]["unit"] == "u.service"


# -- the budget holds: the watchdog over the real restart flow ------------------------------------------------


class _Systemd:
    """PID 1 as the restart flow sees it: ollama.service up for an hour; each restart job is recorded."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.restarts: list[float] = []  # virtual times at which a restart job was queued

    async def unit_state(self, name, timeout=None):
        from ollamactl.systemd import UnitState

        since = self.clock() - 3600
        return UnitState(
            name=name, load_state="loaded", active_state="active", sub_state="running", result="success",
            main_pid=1, invocation_id=f"{len(self.restarts):032x}", active_enter_timestamp=since,
            inactive_exit_timestamp=since, n_restarts=len(self.restarts), fragment_path=None,
        )  # fmt: skip

    async def subscribe(self):
        pass

    async def restart_unit(self, name, *, start=False):
        self.restarts.append(self.clock())
        return f"/org/freedesktop/systemd1/job/{len(self.restarts)}"

    def close(self):
        pass


@needs_root
def test_a_wedge_that_survives_every_restart_gets_the_budgets_restarts_and_no_more(rundir, monkeypatch):
    """Nothing faked between the watchdog's verdict and the bus: Watcher.recover, AsyncController.restart,
    its budget check and its record of each restart.  Ollama stays wedged through every restart, probed
    once a second for 700 s of virtual time.  With the shipped budget (at most 3 in any 600 s, gaps of 10 s,
    20 s, 40 s) the restarts come at 0, 10, 30, then 600 (the first left the window), 640 and 660 s; every
    refused attempt holds the watchdog until the budget allows the next, so it asks once per hold, not once
    per probe.
    """
    from types import SimpleNamespace

    from ollamactl import controller as controller_mod
    from ollamactl import late as late_mod
    from ollamactl import watch
    from ollamactl.config import load_config
    from ollamactl.controller import AsyncController
    from ollamactl.watch import Notifier, Watcher

    t0 = time.time() - 3600  # virtual time in the past, so the shared history's entries are never "future"
    now = [t0]
    clock = SimpleNamespace(
        time=lambda: now[0], monotonic=lambda: now[0], strftime=time.strftime, localtime=time.localtime
    )
    monkeypatch.setattr(controller_mod, "time", clock)
    monkeypatch.setattr(watch, "time", clock)
    monkeypatch.setattr(late_mod, "audit", lambda *a, **k: None)
    monkeypatch.setattr(controller_mod, "log", lambda *a, **k: None)
    logged: list[tuple[str, str]] = []
    monkeypatch.setattr(watch, "log", lambda level, message, **k: logged.append((level, message)))

    cfg = load_config({"runtime_dir": str(rundir.path), "group": rundir.group}, environ={}, config_file="/dev/null")
    assert (cfg.max_restarts, cfg.restart_window, cfg.restart_backoff) == (3, 600.0, 10.0)  # the shipped budget
    actl = AsyncController(config=cfg)
    systemd = _Systemd(lambda: now[0])
    actl._bus = systemd

    async def wedged(deep=False, judge=None):  # the verdict has its own tests: here it is always "wedged"
        return SimpleNamespace(outcome="wedged", evidence="no answer", confirmed=True, since=now[0] - 3)

    actl.probe = wedged
    attempts: list[float] = []
    restart = actl.restart

    async def counted(*args, **kwargs):
        attempts.append(now[0] - t0)
        return await restart(*args, **kwargs)

    actl.restart = counted
    watcher = Watcher(actl, Notifier(address=""))

    async def run(seconds: int) -> None:
        for _ in range(seconds):
            await watcher.tick(deep=True)
            now[0] += 1.0

    asyncio.run(run(700))
    restarts = [0, 10, 30, 600, 640, 660]
    assert [t - t0 for t in systemd.restarts] == restarts
    # one refused attempt right after each restart, then nothing until the hold ends
    assert attempts == sorted(restarts + [t + 1 for t in restarts]), attempts
    refused = [m for lv, m in logged if lv == "WARNING" and m.startswith("not restarting ollama.service")]
    assert len(refused) == 6 and "3 restart(s) in the last 600s" in refused[-1]
    assert watcher.restarts == 6 and watcher.hold_until - t0 == 1200  # until 600 leaves the window
    shared = rundir.read_state().restarts  # and members' budget sees the watchdog's restarts
    assert [r.at - t0 for r in shared] == restarts
