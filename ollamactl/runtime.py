"""The runtime directory (/run/ollamactl): the restart lock and the restart history.

Every member of group ``ollamactl`` shares it (tmpfiles: root:ollamactl 2770),
so concurrent detectors in different processes and users serialise on one
``flock`` of the directory itself (released by the kernel when the holder
closes it or dies) and see one history of restarts in ``state.json``, which
the budget is computed from.  There is no lock file: a non-member cannot open
a 2770 directory, so cannot take the lock or read the history.

Root (``sudo ollamactl restart``, root apps using the library) and the
watchdog work in a directory every member can write, so nothing found in it is
trusted:

- the directory is opened once with O_DIRECTORY|O_NOFOLLOW and used only if
  that fd says root-owned, the configured group, mode 2770 (nothing a member
  can change); everything else goes through that fd;
- files are opened by fixed names relative to it with O_NOFOLLOW|O_NONBLOCK,
  must be regular files, and are read at most MAX_STATE_BYTES;
- the history is written to a new file created with O_EXCL under an
  unpredictable name and renamed over ``state.json`` within the directory, so
  an existing file (or whatever a symlink points to) is never opened for
  writing;
- the content is data, never a path: every entry is validated, bad ones are
  dropped, and a bad file only ever means "less history".

Why root does this I/O itself rather than in a child that drops to a member:
every path is a fixed name relative to a verified root-owned directory fd, the
last component is never followed, nothing is created except a fresh O_EXCL
file, and the only other change is a rename inside the directory; that is no
more than any member can do there already, so root's privileges never reach
outside it.  A child running as a member would need the same checks (it would
be as exposed as any member), and would cost a fork (unsafe in threaded apps)
on every restart.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import json
import math
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollamactl._log import log
from ollamactl.errors import OllamactlError, PermissionDenied, RuntimeDirError, TimedOut
from ollamactl.nss import current_user, group_id
from ollamactl.units import check_unit_name

RUN_DIR = Path("/run/ollamactl")
RUN_DIR_MODE = 0o2770  # root:GROUP; setgid so members' files keep the group; nothing for others
STATE_MODE = 0o660
STATE_NAME = "state.json"
STATE_VERSION = 1
MAX_STATE_BYTES = 64 * 1024  # 100 typical entries are ~20 KiB; we never write more (see encode_state)
MAX_HISTORY = 100
MAX_REASON = 500
MAX_FUTURE = 60.0  # seconds an entry may lie in the future (clock skew); a forged later one must not block restarts
MAX_UID = 2**32 - 2  # (uid_t)-1 is "no uid"
MAX_PID = 2**31 - 1
DEFAULT_GROUP = "ollamactl"
TMPFILES = Path("/usr/lib/tmpfiles.d/ollamactl.conf")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO or device can never wait (and they are refused right after, by fstat)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_LOCK_POLL_FIRST = 0.005
_LOCK_POLL_MAX = 0.05
_LOCK_MARGIN = 0.01  # give up this much before the caller's deadline, so our message (not theirs) is the one seen


@dataclass
class Restart:
    """One restart that ollamactl performed."""

    at: float
    unit: str
    uid: int
    pid: int
    reason: str | None = None


@dataclass
class State:
    """Restart history, newest last."""

    restarts: list[Restart] = field(default_factory=list)

    def for_unit(self, unit: str) -> list[Restart]:
        return [r for r in self.restarts if r.unit == unit]


def fix_command(path: Path = RUN_DIR, group: str = DEFAULT_GROUP) -> str:
    """The admin's command that (re)creates ``path`` as it must be."""
    if Path(path) == RUN_DIR and group == DEFAULT_GROUP and TMPFILES.exists():
        return f"sudo systemd-tmpfiles --create {TMPFILES}"  # also fixes the mode and owner of an existing one
    return f"sudo install -d -o root -g {group} -m {RUN_DIR_MODE:04o} {path}"


def is_safe(st: os.stat_result, gid: int | None) -> bool:
    """Is this the runtime directory as it must be: a directory root:``gid``, mode exactly 2770?"""
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and st.st_gid == gid and stat.S_IMODE(st.st_mode) == RUN_DIR_MODE


@dataclass(frozen=True)
class DirStatus:
    """What ``inspect_runtime_dir`` found: one line, and the admin's fix when it is not right."""

    ok: bool
    detail: str
    fix: str | None = None


def inspect_runtime_dir(path: Path = RUN_DIR, group: str = DEFAULT_GROUP) -> DirStatus:
    """Is ``path`` the runtime directory as it must be?  Looked at (lstat), not opened, so any user may ask.

    ``open_runtime_dir`` is what a restart uses; this is for ``doctor``,
    which must also explain the directory to users who may not open it.
    """
    path = Path(path)
    fix = fix_command(path, group)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return DirStatus(False, f"{path} does not exist", fix)
    except OSError as exc:
        return DirStatus(False, f"cannot look at {path}: {exc.strerror}", fix)
    if not is_safe(st, group_id(group)):
        return DirStatus(
            False,
            f"{path} is {_owner_mode(st)}, want a directory root:{group} {RUN_DIR_MODE:04o}",
            f"sudo chown root:{group} {path} && sudo chmod {RUN_DIR_MODE:04o} {path}",
        )
    return DirStatus(True, f"{path} is root:{group} {stat.S_IMODE(st.st_mode):04o}")


def open_runtime_dir(path: Path = RUN_DIR, group: str = DEFAULT_GROUP) -> int:
    """Open ``path`` and return its fd if it is safe to use; the caller closes it.

    Safe means what the fd (not the path, which could change) says: a
    directory, owner root, group ``group``, mode exactly 2770.  Raises
    RuntimeDirError (missing, a symlink, wrong owner/group/mode, or no such
    group; with the admin's fix) or PermissionDenied (not a member, with the
    usermod hint).
    """
    path = Path(path)
    gid = group_id(group)
    if gid is None:
        fix = f"sudo groupadd --system {group}"
        raise RuntimeDirError(
            f"group {group} does not exist, so {path} cannot be checked; an admin can create it: {fix}",
            path=str(path),
            fix=fix,
        )
    fix = fix_command(path, group)
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        raise RuntimeDirError(
            f"{path} does not exist; an admin can create it: {fix}", path=str(path), fix=fix
        ) from None
    except PermissionError as exc:
        raise _not_a_member(path, group, exc) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            fix = f"sudo rm {path} && {fix}"
            what = "is a symlink or not a directory"
        else:
            what = f"cannot be opened ({exc.strerror})"
        raise RuntimeDirError(
            f"{path} {what}, refusing to use it; an admin can replace it: {fix}", path=str(path), fix=fix
        ) from None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not is_safe(st, gid):
        os.close(fd)
        raise RuntimeDirError(
            f"{path} is a {_describe(st)}, refusing to use it (want a directory root:{group} "
            f"{RUN_DIR_MODE:04o}, for root and the group only); an admin can fix it: {fix}",
            path=str(path),
            fix=fix,
        )
    return fd


def check_runtime_dir(path: Path = RUN_DIR, group: str = DEFAULT_GROUP) -> OllamactlError | None:
    """Why ``path`` cannot be used as the runtime directory (the error, with its fix), or None if it can."""
    try:
        os.close(open_runtime_dir(path, group))
    except (RuntimeDirError, PermissionDenied) as err:
        return err
    return None


def _describe(st: os.stat_result) -> str:
    """E.g. "directory root:ollamactl 2775"."""
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "non-directory"
    return f"{kind} {_owner_mode(st)}"


def _owner_mode(st: os.stat_result) -> str:
    """E.g. "root:ollamactl 2775" (numeric ids NSS does not know)."""
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    owner = "root" if st.st_uid == 0 else str(st.st_uid)
    return f"{owner}:{group} {stat.S_IMODE(st.st_mode):04o}"


def _not_a_member(path: Path, group: str, exc: OSError) -> PermissionDenied:
    fix = f"sudo usermod -aG {group} {current_user() or '$USER'}"
    return PermissionDenied(
        f"not allowed to restart through ollamactl: {path} is only for group {group} ({exc.strerror}); "
        f"add yourself to group {group}: {fix}",
        path=str(path),
        group=group,
        fix=fix,
    )


def parse_state(data: bytes, now: float | None = None) -> State:
    """The valid restarts in a state file's bytes; never raises.

    Anything that is not our format is no history; entries that are not
    valid (see ``parse_restart``) are dropped, with one warning for all of them.
    """
    now = time.time() if now is None else now
    if len(data) > MAX_STATE_BYTES:
        log("WARNING", "ignoring restart state: too big", size=len(data), limit=MAX_STATE_BYTES)
        return State()
    try:
        raw = json.loads(data)  # bytes: UTF-8/16/32 detected; a bad encoding is a ValueError
    except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting; ValueError: also int digit limits
        log("WARNING", "ignoring unreadable restart state", error=type(exc).__name__)
        return State()
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION or not isinstance(raw.get("restarts"), list):
        log("WARNING", "ignoring restart state in an unknown format")
        return State()
    entries = raw["restarts"]
    restarts = [r for r in (parse_restart(e, now) for e in entries) if r is not None]
    if len(restarts) < len(entries):
        log("WARNING", "ignoring invalid restart state entries", dropped=len(entries) - len(restarts))
    return State(restarts[-MAX_HISTORY:])


def parse_restart(entry: Any, now: float) -> Restart | None:
    """The Restart an entry of the state file describes, or None if it is not a valid one.

    Valid: ``at`` a finite number (not a bool) in (0, now + MAX_FUTURE]; ``unit``
    a valid unit name; ``uid`` an int in [0, 2**32-2]; ``pid`` an int in
    [1, 2**31-1]; ``reason`` absent, null or a string of at most MAX_REASON
    characters.  Other keys are ignored (a later version may add some).
    """
    if not isinstance(entry, dict):
        return None
    at, unit, uid, pid = entry.get("at"), entry.get("unit"), entry.get("uid"), entry.get("pid")
    reason = entry.get("reason")
    if not _is_int(at) and not (isinstance(at, float) and math.isfinite(at)):
        return None
    if not 0 < at <= now + MAX_FUTURE:  # int/float comparisons are exact: no overflow on huge ints
        return None
    if not isinstance(unit, str) or check_unit_name(unit) is not None:
        return None
    if not (_is_int(uid) and 0 <= uid <= MAX_UID and _is_int(pid) and 1 <= pid <= MAX_PID):
        return None
    if reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_REASON):
        return None
    return Restart(at=float(at), unit=unit, uid=uid, pid=pid, reason=reason)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_state(state: State) -> bytes:
    """The state file's bytes: the newest MAX_HISTORY restarts, reasons cut to MAX_REASON characters.

    Never more than MAX_STATE_BYTES, or the reader would take it for garbage
    and the budget would forget everything: the oldest restarts that do not
    fit are left out (a budget only looks at the last window; an entry is at
    most ~3 KiB, so at least 20 always fit).
    """
    entries = [
        json.dumps({**r.__dict__, "reason": None if r.reason is None else r.reason[:MAX_REASON]})  # ASCII only
        for r in state.restarts[-MAX_HISTORY:]
    ]
    head, sep, tail = f'{{"version": {STATE_VERSION}, "restarts": [', ", ", "]}"
    room = MAX_STATE_BYTES - len(head) - len(tail)
    kept: list[str] = []
    for entry in reversed(entries):  # newest first
        room -= len(entry) + (len(sep) if kept else 0)
        if room < 0:
            break
        kept.append(entry)
    return (head + sep.join(reversed(kept)) + tail).encode()


class HeldLock:
    """The restart lock, taken by ``take_turn`` before the bus was imported, for one restart to use.

    The restart (``RuntimeDir(held=...)``) takes it over and releases it as its own;
    ``close`` releases it if no restart did (idempotent).
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def take(self) -> int | None:
        """The locked directory fd, now the caller's to close; None if taken already."""
        fd, self._fd = self._fd, None
        return fd

    def close(self) -> None:
        fd = self.take()
        if fd is not None:
            os.close(fd)


def take_turn(path: Path = RUN_DIR, group: str = DEFAULT_GROUP, timeout: float = 90.0) -> HeldLock | None:
    """A late detector's turn at the restart lock, without an event loop (see late.py).

    If the lock is free, take it and return it: this process restarts, if
    PID 1's record still shows no restart.  If another process holds it (the
    one restarting), wait until it lets go, then return None: the caller
    re-reads PID 1's record, which by then shows that restart.  Waiting takes
    a shared lock, so all waiters go on together.  None at once, too, if the
    directory cannot be used: the restart itself then says why.  Raises
    TimedOut if the holder keeps the lock past ``timeout``.
    """
    try:
        fd = open_runtime_dir(path, group)
    except (RuntimeDirError, PermissionDenied):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return HeldLock(fd)
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    try:
        end = time.monotonic() + timeout
        delay = _LOCK_POLL_FIRST
        while True:
            time.sleep(min(delay, max(0.0, end - time.monotonic())))
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                pass
            if time.monotonic() >= end:
                raise _lock_timeout(Path(path), timeout)
            delay = min(delay * 1.5, _LOCK_POLL_MAX)
    finally:
        os.close(fd)


def _lock_timeout(path: Path, timeout: float) -> TimedOut:
    return TimedOut(
        f"another process held the restart lock on {path} for over {timeout:g}s; "
        f"see which: lslocks -o PID,COMMAND,PATH | grep {path}",
        step="lock",
        path=str(path),
    )


class RuntimeDir:
    """The lock and the state in one directory shared by the group.

    Each operation opens and verifies the directory (``open_runtime_dir``);
    while ``lock`` is held, state reads and writes reuse its verified fd.
    ``held``: the lock, taken already (``take_turn``); ``lock`` uses it instead of waiting.
    """

    def __init__(self, path: Path = RUN_DIR, group: str = DEFAULT_GROUP, *, held: HeldLock | None = None) -> None:
        self.path = Path(path)
        self.group = group
        self.state_path = self.path / STATE_NAME  # for messages and tests; opened only relative to the dir fd
        self._fd: int | None = None  # the verified directory while ``lock`` runs
        self._held = held

    def check_writable(self) -> None:
        """Refuse early, with the fix, when this process cannot use the directory (unsafe, missing, not a member)."""
        os.close(open_runtime_dir(self.path, self.group))

    @contextmanager
    def _dir(self) -> Iterator[int]:
        if self._fd is not None:
            yield self._fd
            return
        fd = open_runtime_dir(self.path, self.group)
        try:
            yield fd
        finally:
            os.close(fd)

    @asynccontextmanager
    async def lock(self, timeout: float, *, required: bool = True) -> AsyncIterator[bool]:
        """Hold the restart lock (``flock`` of the directory) while the block runs; yield whether it is held.

        Waits at most ``timeout`` seconds.  If another process still holds it
        then: raise TimedOut, or with ``required=False`` run the block without
        the lock (yield False): the watchdog must recover Ollama even while a
        member holds the lock forever.  Closing the fd at the end releases it.
        """
        taken = self._held.take() if self._held is not None else None  # taken before the bus was imported
        fd = open_runtime_dir(self.path, self.group) if taken is None else taken
        try:
            held = True if taken is not None else await self._flock(fd, timeout, required)
            self._fd = fd
            yield held
        finally:
            self._fd = None
            os.close(fd)

    async def _flock(self, fd: int, timeout: float, required: bool) -> bool:
        end = time.monotonic() + timeout
        delay = _LOCK_POLL_FIRST
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            if time.monotonic() + delay >= end - _LOCK_MARGIN:  # no sleep that would overrun the deadline
                if not required:
                    return False
                raise _lock_timeout(self.path, timeout)
            await _sleep(delay)
            delay = min(delay * 1.5, _LOCK_POLL_MAX)

    def read_state(self) -> State:
        """The restart history; never raises.

        A missing, unusable or hostile file (symlink, FIFO, too big, not our
        JSON) is no history, and invalid entries are dropped; so is a directory
        that cannot be used (``lock`` and ``write_state`` are where that is refused).
        """
        try:
            with self._dir() as dfd:
                data = self._read(dfd)
        except OllamactlError as err:
            log("WARNING", f"no restart history: {err.message}", path=str(self.path))
            return State()
        return State() if data is None else parse_state(data)

    def _read(self, dfd: int) -> bytes | None:
        try:
            fd = os.open(STATE_NAME, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symlink
            log(
                "WARNING", "ignoring restart state that cannot be opened", path=str(self.state_path), error=exc.strerror
            )
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                log("WARNING", "ignoring restart state that is not a regular file", path=str(self.state_path))
                return None
            if st.st_size > MAX_STATE_BYTES:
                log("WARNING", "ignoring restart state: too big", path=str(self.state_path), size=st.st_size)
                return None
            chunks, size = [], 0
            while size <= MAX_STATE_BYTES:  # the size may change under us: the read is capped anyway
                chunk = os.read(fd, MAX_STATE_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        except OSError as exc:
            log("WARNING", "ignoring restart state that cannot be read", path=str(self.state_path), error=exc.strerror)
            return None
        finally:
            os.close(fd)

    def write_state(self, state: State) -> None:
        """Replace the state file atomically, group read-write (0660).

        Raises RuntimeDirError or PermissionDenied if the directory cannot be
        used or the file cannot be written.
        """
        data = encode_state(state)
        with self._dir() as dfd:
            tmp = f".state.{os.urandom(8).hex()}.tmp"  # unpredictable (what secrets.token_hex does), and O_EXCL
            try:
                fd = os.open(tmp, _CREATE_FLAGS, STATE_MODE, dir_fd=dfd)
            except OSError as exc:
                raise self._write_problem(exc) from None
            try:
                try:
                    os.fchmod(fd, STATE_MODE)  # whatever the umask (the watchdog's is 0027)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, STATE_NAME, src_dir_fd=dfd, dst_dir_fd=dfd)  # replaces a planted symlink, not its target
            except OSError as exc:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
                raise self._write_problem(exc) from None

    def _write_problem(self, exc: OSError) -> OllamactlError:
        if isinstance(exc, PermissionError):
            return _not_a_member(self.path, self.group, exc)
        return RuntimeDirError(
            f"cannot write the restart history {self.state_path}: {exc.strerror}", path=str(self.path)
        )


async def _sleep(delay: float) -> None:
    import asyncio  # here: a late detector's turn (take_turn) runs before any event loop is needed

    await asyncio.sleep(delay)
