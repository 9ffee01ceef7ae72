"""Restart budget arithmetic, the shared lock across processes, and the state file."""

import asyncio
import json
import multiprocessing
import os
import socket
import struct
import time

import pytest

from ollamactl.budget import Budget
from ollamactl.errors import PermissionDenied, RuntimeDirError, TimedOut
from ollamactl.journal import Journal, encode, field_name
from ollamactl.runtime import Restart, RuntimeDir, State

B = Budget(max_restarts=3, window=600, backoff=10)


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


def test_state_roundtrip_and_tolerance(tmp_path):
    rd = RuntimeDir(tmp_path)
    assert rd.read_state().restarts == []  # missing file
    rd.write_state(State([Restart(at=1.5, unit="ollama.service", uid=1, pid=2, reason="r")]))
    assert rd.read_state().restarts[0].reason == "r"
    assert oct(os.stat(rd.state_path).st_mode & 0o777) == "0o664"
    for junk in ("{not json", "[]", '{"version": 99, "restarts": []}', '{"version": 1, "restarts": [{"x": 1}]}'):
        rd.state_path.write_text(junk)
        assert rd.read_state().restarts == []


def test_missing_dir_and_unwritable_dir_say_how_to_fix(tmp_path):
    with pytest.raises(RuntimeDirError, match="systemd-tmpfiles --create"):
        RuntimeDir(tmp_path / "absent").check_writable()
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(PermissionDenied, match="usermod -aG ollamactl"):
        RuntimeDir(ro).check_writable()


def _hold(path, seconds, ready):
    async def run():
        async with RuntimeDir(path).lock(5):
            ready.set()
            await asyncio.sleep(seconds)

    asyncio.run(run())


def test_lock_serialises_processes_and_is_released_when_the_holder_dies(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, 60, ready))
    holder.start()
    assert ready.wait(10)

    async def try_lock(timeout):
        async with RuntimeDir(tmp_path).lock(timeout):
            return time.monotonic()

    with pytest.raises(TimedOut, match="held the restart lock"):
        asyncio.run(try_lock(0.3))
    holder.kill()  # a crashed holder: the kernel drops its flock
    holder.join()
    t0 = time.monotonic()
    assert asyncio.run(try_lock(2)) - t0 < 0.5


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


def test_state_file_is_json_a_human_can_read(tmp_path):
    rd = RuntimeDir(tmp_path)
    rd.write_state(State([Restart(at=2.0, unit="u.service", uid=0, pid=1)]))
    assert json.loads(rd.state_path.read_text())["restarts"][0]["unit"] == "u.service"
