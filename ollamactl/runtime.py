"""The runtime directory (/run/ollamactl): the restart lock and the budget state.

Every member of group ``ollamactl`` shares it (tmpfiles: root:ollamactl 2775),
so concurrent detectors in different processes and users serialise on one
``flock`` (released by the kernel if the holder dies) and see one history of
restarts.  The state file is replaced atomically and a missing or corrupt one
counts as "no restarts yet", so it can never wedge ollamactl itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollamactl._log import log
from ollamactl.errors import OllamactlError, PermissionDenied, RuntimeDirError, TimedOut
from ollamactl.nss import current_user

RUN_DIR = Path("/run/ollamactl")
STATE_VERSION = 1
_MAX_HISTORY = 100


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


class RuntimeDir:
    """Lock and state in one directory shared by the group."""

    def __init__(self, path: Path = RUN_DIR, group: str = "ollamactl") -> None:
        self.path = Path(path)
        self.group = group
        self.lock_path = self.path / "restart.lock"
        self.state_path = self.path / "state.json"

    def _problem(self, what: str, exc: OSError) -> OllamactlError:
        if isinstance(exc, FileNotFoundError):
            return RuntimeDirError(
                f"cannot {what}: {self.path} does not exist; an admin can create it: sudo systemd-tmpfiles --create",
                path=str(self.path),
            )
        return PermissionDenied(
            f"not allowed to {what}: {self.path} is only for group {self.group} ({exc.strerror}); "
            f"add yourself to group {self.group}: sudo usermod -aG {self.group} {current_user() or '$USER'}",
            path=str(self.path),
            group=self.group,
        )

    def check_writable(self) -> None:
        """Refuse early, with the fix, when this user cannot take part in the shared lock and state."""
        if not os.access(self.path, os.W_OK):
            err = FileNotFoundError if not self.path.exists() else PermissionError
            raise self._problem("restart through ollamactl", err(13, "not writable for you"))

    @asynccontextmanager
    async def lock(self, timeout: float) -> AsyncIterator[None]:
        """Hold the restart lock; wait for it at most ``timeout`` seconds."""
        self.check_writable()
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o664)
        except OSError as exc:
            raise self._problem("open the restart lock", exc) from None
        try:
            end = time.monotonic() + timeout
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        raise TimedOut(
                            f"another ollamactl held the restart lock {self.lock_path} for over {timeout:g}s",
                            step="lock",
                        ) from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 1.5, 0.05)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def read_state(self) -> State:
        """The restart history; empty if the file is missing or unreadable garbage."""
        try:
            raw = json.loads(self.state_path.read_text())
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {raw.get('version')!r}")
            return State([Restart(**r) for r in raw["restarts"]])
        except FileNotFoundError:
            return State()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log("WARNING", "ignoring unreadable restart state", path=str(self.state_path), error=str(exc))
            return State()

    def write_state(self, state: State) -> None:
        """Replace the state file atomically, group-writable."""
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "restarts": [r.__dict__ for r in state.restarts[-_MAX_HISTORY:]],
        }
        tmp = self.path / f".state.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o664)
            with os.fdopen(fd, "w") as fh:
                os.fchmod(fh.fileno(), 0o664)
                json.dump(data, fh)
            os.replace(tmp, self.state_path)
        except OSError as exc:
            raise self._problem("write the restart state", exc) from None
