"""Attacks on the runtime directory by a group member (or a non-member), each shown harmless.

Root's ``ollamactl restart`` and the watchdog work in a directory every member
can write (issue 7).  Each test plants what a member could plant in a real
root:GROUP 2770 directory in /tmp, then runs the code root runs and checks
that nothing outside the directory changed, that nothing blocks or reads
without bound, and that a hostile file is only ever "less history".
The tests with a directory need root (to make it root-owned, and to act as
other users); the parser's properties run as anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import grp
import json
import math
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollamactl import controller as controller_mod
from ollamactl import late as late_mod
from ollamactl import runtime
from ollamactl.budget import Budget
from ollamactl.config import load_config
from ollamactl.controller import AsyncController, Unattended
from ollamactl.errors import BudgetExhausted, PermissionDenied, RuntimeDirError, TimedOut
from ollamactl.runtime import MAX_REASON, Restart, RuntimeDir, State, check_runtime_dir, parse_state
from ollamactl.systemd import UnitState
from ollamactl.units import check_unit_name
from ollamactl.watch import Notifier, Watcher

UNIT = "ollama.service"
NOBODY = 65534  # the uid members and non-members run as in these tests


def group() -> grp.struct_group:
    """The directory's group: ollamactl if the host has it, else an existing system group (the host is not changed)."""
    for name in ("ollamactl", "daemon", "adm", "users"):
        try:
            found = grp.getgrnam(name)
        except KeyError:
            continue
        if found.gr_gid != 0:  # not root's group, so a directory of group root is a wrong group
            return found
    pytest.skip("no suitable system group on this host")


@contextlib.contextmanager
def make_rundir() -> Iterator[Path]:
    """A runtime directory as tmpfiles makes it (root:GROUP 2770), under a parent every user can traverse."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a root-owned directory, other users")
    parent = Path(tempfile.mkdtemp(prefix="ollamactl-test-"))
    try:
        os.chmod(parent, 0o755)
        path = parent / "run"
        path.mkdir()
        os.chown(path, 0, group().gr_gid)
        os.chmod(path, runtime.RUN_DIR_MODE)
        yield path
    finally:
        shutil.rmtree(parent)


def _become(uid: int, groups: list[int]) -> None:
    os.setgroups(groups)
    os.setgid(groups[0] if groups else uid)
    os.setuid(uid)


def in_child(fn, *args, timeout: float = 10.0, extra_memory: int | None = None, as_user=None):
    """Run ``fn(*args)`` in a forked child; ("ok", result) or ("raised", "Type: message").

    Fails the test if the child does not finish within ``timeout`` (it is
    killed), so code that blocks forever cannot hang the suite.
    ``extra_memory`` caps the child's address space at its current size plus
    that many bytes, so an unbounded read fails there instead of on the host.
    ``as_user``: (uid, groups) to run as.
    """
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)

    def target():
        try:
            if extra_memory is not None:
                size = _address_space() + extra_memory
                resource.setrlimit(resource.RLIMIT_AS, (size, size))
            if as_user is not None:
                _become(*as_user)
            sender.send(("ok", fn(*args)))
        except BaseException as exc:
            sender.send(("raised", f"{type(exc).__name__}: {exc}"[:500]))

    child = ctx.Process(target=target, daemon=True)
    child.start()
    try:
        if not receiver.poll(timeout):
            pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout:g}s")
        return receiver.recv()
    finally:
        child.kill()
        child.join()


def _address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


@contextlib.contextmanager
def hold_lock(path: Path, as_user=None) -> Iterator[None]:
    """Another process (by default root, else ``as_user``) holds the restart lock until the block ends."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()

    def hold():
        if as_user is not None:
            _become(*as_user)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # what any member can do to the directory
        ready.set()
        time.sleep(3600)

    holder = ctx.Process(target=hold, daemon=True)
    holder.start()
    try:
        assert ready.wait(10), "the holder did not get the lock"
        yield
    finally:
        holder.kill()
        holder.join()


@pytest.fixture
def rd():
    with make_rundir() as path:
        yield RuntimeDir(path, group().gr_name)


@pytest.fixture
def outside(tmp_path):
    """A file root cares about, outside the runtime directory."""
    target = tmp_path / "precious"
    target.write_text("precious\n")
    return target


def entry(at: float | None = None, **fields: Any) -> dict[str, Any]:
    return {"at": time.time() - 5 if at is None else at, "unit": UNIT, "uid": 1000, "pid": 42, "reason": "r", **fields}


def state_bytes(*entries: Any) -> bytes:
    return json.dumps({"version": 1, "restarts": list(entries)}).encode()


# --- files planted under the names root opens ------------------------------------------------------------------


def test_symlinks_planted_at_predictable_temporary_names_are_not_followed(rd, outside, tmp_path):
    # the old code wrote .state.<pid>.tmp with O_CREAT|O_TRUNC, following symlinks
    absent = tmp_path / "profile.d-file"
    for pid in range(os.getpid() - 3, os.getpid() + 4):
        os.symlink(outside if pid % 2 else absent, rd.path / f".state.{pid}.tmp")
    rd.write_state(State([Restart(at=time.time(), unit=UNIT, uid=0, pid=1, reason="$(id)")]))
    assert outside.read_text() == "precious\n" and not absent.exists()
    assert rd.read_state().restarts[0].reason == "$(id)"
    assert not (rd.path / runtime.STATE_NAME).is_symlink()


@pytest.mark.parametrize("kind", ["symlink to a file", "dangling symlink", "fifo"])
def test_a_planted_restart_lock_is_never_opened(rd, outside, tmp_path, kind):
    # the old code opened restart.lock with O_CREAT, following symlinks, and blocked forever on a FIFO
    absent = tmp_path / "nologin"
    lock = rd.path / "restart.lock"
    if kind == "fifo":
        os.mkfifo(lock, 0o660)
    else:
        os.symlink(outside if kind == "symlink to a file" else absent, lock)

    def take():
        async def go():
            async with rd.lock(1):
                return True

        return asyncio.run(go())

    assert in_child(take, timeout=5) == ("ok", True)
    assert outside.read_text() == "precious\n" and not absent.exists()


def test_state_symlink_is_no_history_and_writing_replaces_the_link_not_its_target(rd, tmp_path):
    target = tmp_path / "elsewhere.json"
    original = state_bytes(entry(), entry())
    target.write_bytes(original)
    os.symlink(target, rd.state_path)
    assert rd.read_state().restarts == []
    rd.write_state(State([Restart(at=time.time(), unit=UNIT, uid=0, pid=1)]))
    assert target.read_bytes() == original
    assert rd.state_path.is_file() and not rd.state_path.is_symlink()
    assert len(rd.read_state().restarts) == 1


def test_state_fifo_reads_promptly_as_no_history(rd):
    os.mkfifo(rd.state_path, 0o660)
    assert in_child(rd.read_state, timeout=5) == ("ok", State())


def test_state_symlink_to_dev_zero_reads_promptly_as_no_history(rd):
    os.symlink("/dev/zero", rd.state_path)
    assert in_child(rd.read_state, timeout=5, extra_memory=256 << 20) == ("ok", State())


def test_state_as_a_directory_is_no_history_and_a_write_fails_cleanly(rd):
    rd.state_path.mkdir()
    assert rd.read_state() == State()
    with pytest.raises(RuntimeDirError, match="cannot write the restart history"):
        rd.write_state(State([Restart(at=time.time(), unit=UNIT, uid=0, pid=1)]))
    assert [p.name for p in rd.path.iterdir()] == [runtime.STATE_NAME]  # no temporary file left behind


def test_a_ten_mib_state_file_is_corrupt_and_read_promptly(rd):
    valid = state_bytes(*[entry() for _ in range(3)])
    rd.state_path.write_bytes(valid[:-1] + b" " * (10 << 20) + b"}")  # valid JSON, 10 MiB
    result = in_child(rd.read_state, timeout=5, extra_memory=64 << 20)
    assert result == ("ok", State())


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000,
        b'{"version": 1, "restarts": ' + b"[" * 100_000,
        b'{"version": 1, "restarts": [' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"]}",
        b'{"version": 1, "restarts": [{"at": 1' + b"0" * 5000 + b', "unit": "ollama.service", "uid": 1, "pid": 1}]}',
        b"\xff\xfe\x00garbage",
        b"{not json",
        b"null",
        b"[]",
        b'{"version": 99, "restarts": []}',
        b'{"version": 1, "restarts": {"at": 1}}',
        b"",
    ],
    ids=[
        "deep-array",
        "deep-in-restarts",
        "deep-objects",
        "5000-digit-int",
        "not-utf8",
        "not-json",
        "null",
        "list",
        "version",
        "restarts-not-a-list",
        "empty",
    ],
)
def test_a_hostile_state_file_is_no_history_and_never_raises(rd, content):
    rd.state_path.write_bytes(content)
    assert rd.read_state() == State()
    rd.write_state(State([Restart(at=time.time(), unit=UNIT, uid=0, pid=1)]))  # and the next write repairs it
    assert len(rd.read_state().restarts) == 1


NOW = time.time()
BAD_ENTRIES = {
    "at string": '{"at": "x", "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at null": '{"at": null, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at missing": '{"unit": "ollama.service", "uid": 1, "pid": 2}',
    "at bool": '{"at": true, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at NaN": '{"at": NaN, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at Infinity": '{"at": Infinity, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at -Infinity": '{"at": -Infinity, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at 1e400": '{"at": 1e400, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at negative": '{"at": -5, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at zero": '{"at": 0, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at an hour ahead": f'{{"at": {NOW + 3600}, "unit": "ollama.service", "uid": 1, "pid": 2}}',
    "at 1e300": '{"at": 1e300, "unit": "ollama.service", "uid": 1, "pid": 2}',
    "at huge int": f'{{"at": {10**4000}, "unit": "ollama.service", "uid": 1, "pid": 2}}',
    "at list": '{"at": [1], "unit": "ollama.service", "uid": 1, "pid": 2}',
    "unit path": '{"at": 1, "unit": "../../etc/passwd", "uid": 1, "pid": 2}',
    "unit empty": '{"at": 1, "unit": "", "uid": 1, "pid": 2}',
    "unit int": '{"at": 1, "unit": 5, "uid": 1, "pid": 2}',
    "unit newline": '{"at": 1, "unit": "ollama.service\\n", "uid": 1, "pid": 2}',
    "unit escape": '{"at": 1, "unit": "\\u001b]0;x\\u0007.service", "uid": 1, "pid": 2}',
    "unit too long": '{"at": 1, "unit": "' + "x" * 300 + '.service", "uid": 1, "pid": 2}',
    "uid negative": '{"at": 1, "unit": "ollama.service", "uid": -1, "pid": 2}',
    "uid (uid_t)-1": '{"at": 1, "unit": "ollama.service", "uid": 4294967295, "pid": 2}',
    "uid string": '{"at": 1, "unit": "ollama.service", "uid": "0", "pid": 2}',
    "uid bool": '{"at": 1, "unit": "ollama.service", "uid": true, "pid": 2}',
    "uid float": '{"at": 1, "unit": "ollama.service", "uid": 1.0, "pid": 2}',
    "pid zero": '{"at": 1, "unit": "ollama.service", "uid": 1, "pid": 0}',
    "pid 2**31": '{"at": 1, "unit": "ollama.service", "uid": 1, "pid": 2147483648}',
    "pid null": '{"at": 1, "unit": "ollama.service", "uid": 1, "pid": null}',
    "reason int": '{"at": 1, "unit": "ollama.service", "uid": 1, "pid": 2, "reason": 5}',
    "reason too long": '{"at": 1, "unit": "ollama.service", "uid": 1, "pid": 2, "reason": "' + "r" * 501 + '"}',
    "reason object": '{"at": 1, "unit": "ollama.service", "uid": 1, "pid": 2, "reason": {}}',
    "entry string": '"x"',
    "entry list": "[]",
    "entry null": "null",
    "entry empty": "{}",
}


@pytest.mark.parametrize("bad", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_an_invalid_entry_is_dropped_and_the_valid_ones_kept(rd, bad):
    good = json.dumps(entry(reason="kept"))
    rd.state_path.write_text(f'{{"version": 1, "restarts": [{good}, {bad}, {good}]}}')
    restarts = rd.read_state().restarts
    assert [r.reason for r in restarts] == ["kept", "kept"]
    assert all(type(r.at) is float and math.isfinite(r.at) for r in restarts)


def test_invalid_entries_are_counted_in_one_warning(rd, monkeypatch):
    logged = []
    monkeypatch.setattr(runtime, "log", lambda level, message, **fields: logged.append((level, message, fields)))
    rd.state_path.write_text(f'{{"version": 1, "restarts": [{", ".join(BAD_ENTRIES.values())}]}}')
    assert rd.read_state() == State()
    assert logged == [("WARNING", "ignoring invalid restart state entries", {"dropped": len(BAD_ENTRIES)})]


def test_forged_future_restarts_cannot_block_restarts_forever(rd):
    now = time.time()
    forged = [entry(at=now + 10**6), entry(at=now + 3600), entry(at=now + 61)]
    rd.state_path.write_bytes(state_bytes(*forged, entry(at=now + 30)))  # 30 s of clock skew is believed
    history = [r.at for r in rd.read_state().for_unit(UNIT)]
    assert history == [now + 30]
    assert Budget().next_allowed([h for h in history if h <= now], now) == now


# --- the directory itself ----------------------------------------------------------------------------------------


def _chmod(mode):
    return lambda path: os.chmod(path, mode)


@pytest.mark.parametrize(
    ("break_it", "said"),
    [
        (_chmod(0o2775), "directory root:{group} 2775"),
        (_chmod(0o0777), "directory root:{group} 0777"),
        (_chmod(0o0770), "directory root:{group} 0770"),
        (_chmod(0o2771), "directory root:{group} 2771"),
        (lambda p: os.chown(p, 1, -1), "directory 1:{group} 2770"),
        (lambda p: os.chown(p, -1, 0), "directory root:root 2770"),
    ],
    ids=["2775", "0777", "0770", "2771", "owner", "group"],
)
def test_a_directory_others_could_change_is_refused_with_the_fix(rd, break_it, said):
    break_it(rd.path)
    rd.state_path.write_bytes(state_bytes(entry()))
    fix = f"sudo install -d -o root -g {rd.group} -m 2770 {rd.path}"
    err = check_runtime_dir(rd.path, rd.group)
    assert isinstance(err, RuntimeDirError) and err.exit_code == 9
    assert said.format(group=rd.group) in err.message and "refusing" in err.message and fix in err.message
    assert err.details["fix"] == fix
    with pytest.raises(RuntimeDirError, match="refusing"):
        asyncio.run(_lock_once(rd))
    with pytest.raises(RuntimeDirError, match="refusing"):
        rd.write_state(State())
    assert rd.read_state() == State()  # its contents are not trusted either


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_symlink_or_file_in_place_of_the_directory_is_refused(kind, tmp_path):
    with make_rundir() as real:
        path = tmp_path / "run"
        if kind == "symlink":
            os.symlink(real, path)  # to a perfectly good directory: still not ours to follow
        else:
            path.write_text("")
        rd = RuntimeDir(path, group().gr_name)
        with pytest.raises(RuntimeDirError, match="symlink or not a directory") as caught:
            asyncio.run(_lock_once(rd))
        assert caught.value.details["fix"].startswith(f"sudo rm {path} && sudo install -d")
        with pytest.raises(RuntimeDirError):
            rd.write_state(State())
        assert rd.read_state() == State()
        assert not (real / runtime.STATE_NAME).exists()


def test_a_missing_directory_says_how_to_create_it(tmp_path):
    rd = RuntimeDir(tmp_path / "absent", group().gr_name)
    with pytest.raises(RuntimeDirError, match="does not exist; an admin can create it: sudo install -d"):
        asyncio.run(_lock_once(rd))
    assert rd.read_state() == State()


def test_the_default_directory_is_fixed_with_tmpfiles_when_the_package_is_installed(monkeypatch, tmp_path):
    conf = tmp_path / "ollamactl.conf"
    conf.write_text("")
    monkeypatch.setattr(runtime, "TMPFILES", conf)
    assert runtime.fix_command() == f"sudo systemd-tmpfiles --create {conf}"
    assert runtime.fix_command(runtime.RUN_DIR, "ops") == "sudo install -d -o root -g ops -m 2770 /run/ollamactl"


async def _lock_once(rd: RuntimeDir) -> bool:
    async with rd.lock(1) as held:
        return held


# --- members and non-members --------------------------------------------------------------------------------------


def _nonmember_attempts(path: str):
    out = {}
    try:
        RuntimeDir(Path(path), group().gr_name).check_writable()
    except PermissionDenied as err:
        out["check"] = err.message
    for what, name in (("open dir", path), ("read state", f"{path}/state.json")):
        try:
            os.close(os.open(name, os.O_RDONLY))
            out[what] = "allowed"
        except PermissionError:
            out[what] = "denied"
    return out


def test_a_non_member_can_neither_lock_nor_read_the_history(rd):
    rd.write_state(State([Restart(at=time.time(), unit=UNIT, uid=1000, pid=42, reason="private")]))
    status, out = in_child(_nonmember_attempts, str(rd.path), as_user=(NOBODY, []))
    assert status == "ok", out
    assert out["open dir"] == "denied" and out["read state"] == "denied"  # no fd to flock, nothing to read
    assert "sudo usermod -aG" in out["check"]


def _member_writes(path: str):
    RuntimeDir(Path(path), group().gr_name).write_state(State([Restart(at=time.time(), unit=UNIT, uid=1, pid=2)]))


def test_a_members_state_file_is_0660_in_the_group_and_root_reads_it(rd):
    assert in_child(_member_writes, str(rd.path), as_user=(NOBODY, [group().gr_gid]))[0] == "ok"
    st = os.stat(rd.state_path)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o660, NOBODY, group().gr_gid)
    assert [r.uid for r in rd.read_state().restarts] == [1]


def test_roots_state_file_is_0660_whatever_the_umask(rd):
    old = os.umask(0o077)
    try:
        rd.write_state(State())
    finally:
        os.umask(old)
    assert os.stat(rd.state_path).st_mode & 0o7777 == 0o660


# --- the watchdog against a member: forged history, a lock held forever ------------------------------------------


class FakeBus:
    """systemd as the restart flow sees it: the unit has been up for an hour, restarts always succeed."""

    def __init__(self) -> None:
        self.restarted: list[str] = []
        self.since = time.time() - 3600

    async def unit_state(self, name: str, timeout: float | None = None) -> UnitState:
        return UnitState(
            name=name, load_state="loaded", active_state="active", sub_state="running", result="success",
            main_pid=1, invocation_id=f"inv{len(self.restarted)}", active_enter_timestamp=self.since,
            inactive_exit_timestamp=self.since, n_restarts=0, fragment_path=None,
        )  # fmt: skip

    async def subscribe(self) -> None:
        pass

    async def restart_unit(self, name: str, *, start: bool = False) -> str:
        self.restarted.append(name)
        return f"/org/freedesktop/systemd1/job/{len(self.restarted)}"

    async def wait_job(self, job: str, timeout: float) -> str:
        return "done"

    def close(self) -> None:
        pass


@pytest.fixture
def actl(rd, monkeypatch):
    logged: list[tuple[str, str]] = []
    monkeypatch.setattr(late_mod, "audit", lambda *a, **k: None)
    monkeypatch.setattr(controller_mod, "log", lambda level, message, **k: logged.append((level, message)))
    cfg = load_config({"runtime_dir": str(rd.path), "group": rd.group}, environ={}, config_file="/dev/null")
    ctl = AsyncController(config=cfg)
    ctl._bus = FakeBus()
    ctl._admin = False  # a member's process, unless a test says otherwise
    ctl.logged = logged
    return ctl


def test_a_forged_history_does_not_exhaust_the_watchdogs_budget(rd, actl):
    now = time.time()
    rd.state_path.write_bytes(state_bytes(*(entry(at=now - k, uid=1000) for k in (1, 2, 3))))
    with pytest.raises(BudgetExhausted):  # people and apps share the history, forged or not
        asyncio.run(actl.restart("member", wait=False))
    watchdog = Unattended()
    result = asyncio.run(actl.restart("watch: wedged", wait=False, unattended=watchdog))
    assert result.action == "queued" and actl._bus.restarted == [UNIT]
    shared = rd.read_state().restarts
    assert len(shared) == 4 and shared[-1].uid == os.getuid()  # recorded for the members' budget too
    assert watchdog.history == [shared[-1].at]
    with pytest.raises(BudgetExhausted):  # its own restarts do count: 10 s of backoff
        asyncio.run(actl.restart("watch: again", wait=False, unattended=watchdog))
    assert actl._bus.restarted == [UNIT]


def test_a_forged_history_does_not_stop_root(rd, actl):
    now = time.time()
    rd.state_path.write_bytes(state_bytes(*(entry(at=now - k, uid=0) for k in (1, 2, 3))))
    with pytest.raises(BudgetExhausted):
        asyncio.run(actl.restart("member", wait=False))
    actl._admin = True  # root's CLI: the admin, acting by hand
    result = asyncio.run(actl.restart("admin", wait=False))
    assert result.action == "queued" and actl._bus.restarted == [UNIT]
    assert any(level == "WARNING" and "does not bind root" in msg for level, msg in actl.logged)
    assert len(rd.read_state().restarts) == 4  # and it is recorded for the members' budget


def test_the_watchdog_restarts_without_the_lock_a_member_holds_forever(rd, actl):
    with hold_lock(rd.path, as_user=(NOBODY, [group().gr_gid])):
        t0 = time.monotonic()
        with pytest.raises(TimedOut, match=f"held the restart lock on {rd.path}.*lslocks") as caught:
            asyncio.run(actl.restart("root", wait=False, timeout=0.6))  # root's CLI: a clear exit 7
        assert caught.value.exit_code == 7 and time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        result = asyncio.run(actl.restart("watch", wait=False, unattended=Unattended(lock_wait=0.3)))
        assert result.action == "queued" and 0.25 < time.monotonic() - t0 < 1.5
    assert any(level == "WARNING" and "restarting without it" in msg for level, msg in actl.logged)
    assert [r.reason for r in rd.read_state().restarts] == ["watch"]


def test_the_watchdog_recovers_through_everything_a_member_planted(rd, actl, tmp_path):
    now = time.time()
    hostile = [entry(at="x"), entry(at=None), *(entry(at=now - k) for k in (1, 2, 3)), entry(at=now + 10**6)]
    rd.state_path.write_bytes(state_bytes(*hostile))
    os.symlink(tmp_path / "nologin", rd.path / "restart.lock")
    actl.config = dataclasses.replace(actl.config, watch_failure_threshold=1)

    async def wedged(deep=False, judge=None):
        return SimpleNamespace(outcome="wedged", evidence="no answer", confirmed=True, since=now - 3, healthy=False)

    actl.probe = wedged
    watcher = Watcher(actl, Notifier(address=""))
    asyncio.run(watcher.tick(False))
    assert actl._bus.restarted == [UNIT] and watcher.restarts == 1 and watcher.errors == 0
    assert not (tmp_path / "nologin").exists()


# --- properties of the parser ------------------------------------------------------------------------------------


def assert_valid(state: State, now: float) -> None:
    """What every entry read back must satisfy, stated independently of the parser."""
    assert isinstance(state, State) and len(state.restarts) <= runtime.MAX_HISTORY
    for r in state.restarts:
        assert type(r.at) is float and math.isfinite(r.at) and 0 < r.at <= now + runtime.MAX_FUTURE
        assert type(r.unit) is str and check_unit_name(r.unit) is None
        assert type(r.uid) is int and 0 <= r.uid <= 2**32 - 2
        assert type(r.pid) is int and 1 <= r.pid <= 2**31 - 1
        assert r.reason is None or (type(r.reason) is str and len(r.reason) <= MAX_REASON)


@given(st.binary(max_size=4096))
def test_property_arbitrary_bytes_never_raise(data):
    now = time.time()
    assert_valid(parse_state(data, now), now)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
valid_entries = st.fixed_dictionaries(
    {
        "at": st.floats(min_value=1e-6, max_value=1.7e9) | st.integers(1, 1_700_000_000),
        "unit": st.sampled_from([UNIT, "ollama@gpu0.service", "a-b_c.service", "x.timer"]),
        "uid": st.integers(0, 2**32 - 2),
        "pid": st.integers(1, 2**31 - 1),
    },
    optional={"reason": st.none() | st.text(max_size=MAX_REASON)},
)
EDGES = [0, -1, 0.0, -0.0, 5e-324, True, False, 2**31, 2**32 - 1, 2**32 - 2, 2**31 - 1, 10**30, "", "x" * 501]
edge_values = st.sampled_from(EDGES) | st.floats() | st.integers() | st.text(max_size=30)
DELETE = object()


def _spoil(entry: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    for key, value in changes:
        if value is DELETE:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


# valid entries, some with a field or two replaced by an edge value, junk or nothing: both sides of every check
maybe_entries = st.builds(
    _spoil,
    valid_entries,
    st.lists(
        st.tuples(st.sampled_from(["at", "unit", "uid", "pid", "reason"]), edge_values | json_values | st.just(DELETE)),
        max_size=2,
    ),
)


@given(json_values)
def test_property_arbitrary_json_never_raises(value):
    now = time.time()
    assert_valid(parse_state(json.dumps(value).encode(), now), now)
    assert_valid(parse_state(json.dumps({"version": 1, "restarts": value}).encode(), now), now)


@given(st.lists(maybe_entries | json_values, max_size=8))
def test_property_exactly_the_valid_entries_are_kept_in_order(entries):
    now = time.time()
    state = parse_state(json.dumps({"version": 1, "restarts": entries}).encode(), now)
    assert_valid(state, now)
    expected = [e for e in entries if _valid_by_the_spec(e, now)]
    assert [(r.at, r.unit, r.uid, r.pid, r.reason) for r in state.restarts] == [
        (e["at"], e["unit"], e["uid"], e["pid"], e.get("reason")) for e in expected
    ]


def _valid_by_the_spec(e: Any, now: float) -> bool:
    def integer(v: Any, lo: int, hi: int) -> bool:
        return type(v) is int and lo <= v <= hi

    if not isinstance(e, dict) or not all(k in e for k in ("at", "unit", "uid", "pid")):
        return False
    at = e["at"]
    ok_at = type(at) in (int, float) and (type(at) is int or math.isfinite(at)) and 0 < at <= now + 60
    ok_unit = type(e["unit"]) is str and check_unit_name(e["unit"]) is None
    reason = e.get("reason")
    ok_reason = reason is None or (type(reason) is str and len(reason) <= 500)
    return ok_at and ok_unit and integer(e["uid"], 0, 2**32 - 2) and integer(e["pid"], 1, 2**31 - 1) and ok_reason


restarts = st.builds(
    Restart,
    at=st.floats(min_value=1e-3, max_value=time.time(), allow_nan=False),
    unit=st.sampled_from([UNIT, "ollama@gpu0.service", "x-y_z.service"]),
    uid=st.integers(0, 2**32 - 2),
    pid=st.integers(1, 2**31 - 1),
    reason=st.none() | st.text(max_size=MAX_REASON + 50),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(restarts, max_size=runtime.MAX_HISTORY + 20))
def test_property_a_state_round_trips_through_the_file(rd, history):
    rd.write_state(State(history))
    expected = [
        Restart(r.at, r.unit, r.uid, r.pid, None if r.reason is None else r.reason[:MAX_REASON])
        for r in history[-runtime.MAX_HISTORY :]
    ]
    read = rd.read_state().restarts
    assert os.path.getsize(rd.state_path) <= runtime.MAX_STATE_BYTES
    assert read == expected[len(expected) - len(read) :]  # the newest ones...
    if len(read) < len(expected):  # ...and all of them unless one more would not fit in the size limit
        one_more = expected[len(expected) - len(read) - 1 :]
        assert len(json.dumps({"version": 1, "restarts": [r.__dict__ for r in one_more]})) > runtime.MAX_STATE_BYTES
    assert not [p for p in os.listdir(rd.path) if p.endswith(".tmp")]


def test_a_full_history_of_long_reasons_still_fits_and_keeps_the_newest(rd):
    now = time.time()
    history = [Restart(now - 100 + k, UNIT, 1000, 42, "\x01é" * 400) for k in range(runtime.MAX_HISTORY)]
    rd.write_state(State(history))
    assert os.path.getsize(rd.state_path) <= runtime.MAX_STATE_BYTES
    read = rd.read_state().restarts
    assert len(read) >= 20 and [r.at for r in read] == [r.at for r in history[-len(read) :]]


def test_the_memory_cap_of_in_child_is_real():
    # what makes the /dev/zero and 10 MiB tests fail (rather than eat the host) on code that reads without bound
    assert in_child(lambda: len(bytearray(512 << 20)), extra_memory=64 << 20)[0] == "raised"
