"""The restart flow, top to bottom, and the public API around it.

``AsyncController`` is the implementation; ``Controller`` runs it on a private
event loop for synchronous callers (the way httpx and ollama-python pair their
clients).  Settings come from ``load_config``; systemd is reached only through
``SystemdBus``; Ollama only through ``probe``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ollamactl import probe
from ollamactl._log import log
from ollamactl.config import Config, load_config
from ollamactl.errors import RestartFailed, TimedOut
from ollamactl.systemd import SystemdBus, UnitState

if TYPE_CHECKING:
    from ollamactl.models import RestartResult, Status

T = TypeVar("T")
_POLL_FIRST = 0.02  # readiness: poll every 20 ms while a server usually binds its port...
_POLL_FAST_FOR = 2.0  # ...for this long...
_POLL_MAX = 0.25  # ...then back off to this
_POLL_GROWTH = 1.25
_UNIT_CHECK_EVERY = 0.1  # how often to ask systemd whether the new process died


class AsyncController:
    """Restart and inspect Ollama's systemd unit from asyncio code.

    Settings: built-in defaults < /etc/ollamactl/config.toml < OLLAMACTL_*
    variables < keyword arguments (unit, url, timeout, bus_timeout, ...).
    Use ``async with`` to keep one bus connection for several calls.
    """

    def __init__(
        self,
        *,
        config: Config | None = None,
        config_file: str | os.PathLike[str] | None = None,
        **settings: Any,
    ) -> None:
        self.config: Config = config or load_config(settings, config_file=config_file)
        self._bus: SystemdBus | None = None

    async def __aenter__(self) -> AsyncController:
        self._bus = await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    async def _connect(self) -> SystemdBus:
        bus = SystemdBus(call_timeout=self.config.bus_timeout, group=self.config.group)
        await bus.connect()
        return bus

    @asynccontextmanager
    async def _systemd(self) -> AsyncIterator[SystemdBus]:
        if self._bus is not None:
            yield self._bus
            return
        bus = await self._connect()
        try:
            yield bus
        finally:
            bus.close()

    async def restart(
        self,
        reason: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> RestartResult:
        """Restart the unit; with ``wait`` return only once the API answers again.

        Raises PermissionDenied, UnitNotFound, UnitMasked, BusUnavailable,
        RestartFailed or TimedOut (all OllamactlError) instead of returning.
        """
        from ollamactl.models import RestartResult

        cfg = self.config
        total = cfg.timeout if timeout is None else _check_timeout(timeout)
        clock = _Deadline(total)
        log("INFO", "restart requested", unit=cfg.unit, reason=reason, uid=os.getuid(), pid=os.getpid())
        async with _deadline_scope(clock, "connect to the system bus"):
            async with self._systemd() as bus:
                before = await bus.unit_state(cfg.unit, timeout=clock.left())
                before.check_loadable()
                await bus.subscribe()
                started = time.monotonic()
                job = await bus.restart_unit(before.name)
                log("INFO", "restart job queued", unit=before.name, job=job)
                if not wait:
                    return RestartResult(
                        action="queued",
                        unit=before.name,
                        reason=reason,
                        job=job,
                        old_invocation_id=before.invocation_id,
                    )
                job_result = await bus.wait_job(job, clock.left())
                job_seconds = time.monotonic() - started
                after = await bus.unit_state(before.name, timeout=clock.left())
                log("INFO", "restart job finished", job=job, result=job_result, seconds=round(job_seconds, 3))
                if job_result != "done":
                    raise _restart_failed(after, f"the restart job ended with result '{job_result}'", job_result)
                version, ready_seconds = await self._wait_ready(bus, after, clock)
        log("INFO", "ollama answers again", unit=after.name, ready_seconds=round(ready_seconds, 3))
        return RestartResult(
            action="restarted",
            unit=after.name,
            reason=reason,
            job=job,
            job_result=job_result,
            old_invocation_id=before.invocation_id,
            new_invocation_id=after.invocation_id,
            job_seconds=round(job_seconds, 4),
            ready_seconds=round(ready_seconds, 4),
            api_version=version,
        )

    async def _wait_ready(self, bus: SystemdBus, started: UnitState, clock: _Deadline) -> tuple[str, float]:
        """Poll /api/version until it answers; fail fast if the new process dies."""
        endpoint = probe.parse_url(self.config.url)
        t0 = time.monotonic()
        delay = _POLL_FIRST
        next_unit_check = t0
        last_error = "no answer yet"
        while True:
            try:
                version = await probe.api_version(endpoint, min(self.config.http_timeout, clock.left()))
                return version, time.monotonic() - t0
            except (probe.HTTPError, TimeoutError) as exc:
                last_error = str(exc) or f"no answer within {self.config.http_timeout:g}s"
            now = time.monotonic()
            if now >= next_unit_check:
                next_unit_check = now + _UNIT_CHECK_EVERY
                state = await bus.unit_state(started.name, timeout=clock.left())
                if _died(state, started):
                    raise _restart_failed(state, "the unit stopped again while starting", "done")
            if clock.left() <= 0:
                raise TimedOut(
                    f"{started.name} restarted, but Ollama at {endpoint.url} did not answer within "
                    f"{clock.total:g}s ({last_error}); see: journalctl -u {started.name} -n 50",
                    step="readiness",
                    url=endpoint.url,
                )
            await asyncio.sleep(min(delay, clock.left()))
            if now - t0 > _POLL_FAST_FOR:
                delay = min(delay * _POLL_GROWTH, _POLL_MAX)

    async def status(self) -> Status:
        """The unit's state and whether Ollama's API answers (never restarts)."""
        from ollamactl.models import Status

        cfg = self.config
        endpoint = probe.parse_url(cfg.url)

        async def unit() -> UnitState:
            async with self._systemd() as bus:
                return await bus.unit_state(cfg.unit)

        async def api() -> tuple[str | None, str | None]:
            try:
                return await probe.api_version(endpoint, cfg.http_timeout), None
            except TimeoutError:
                return None, f"no answer within {cfg.http_timeout:g}s"
            except probe.HTTPError as exc:
                return None, str(exc)

        state, (version, api_error) = await asyncio.gather(unit(), api())
        if state.load_state == "not-found":
            state.check_loadable()
        return Status(
            healthy=state.active_state == "active" and version is not None,
            unit=state.name,
            load_state=state.load_state,
            active_state=state.active_state,
            sub_state=state.sub_state,
            result=state.result,
            main_pid=state.main_pid,
            invocation_id=state.invocation_id,
            active_enter_timestamp=state.active_enter_timestamp,
            n_restarts=state.n_restarts,
            fragment_path=state.fragment_path,
            url=endpoint.url,
            api_ok=version is not None,
            api_version=version,
            api_error=api_error,
        )


class Controller:
    """The synchronous face of AsyncController: same settings, same errors."""

    def __init__(
        self,
        *,
        config: Config | None = None,
        config_file: str | os.PathLike[str] | None = None,
        **settings: Any,
    ) -> None:
        self.config: Config = config or load_config(settings, config_file=config_file)

    def _actl(self) -> AsyncController:
        return AsyncController(config=self.config)

    def restart(self, reason: str | None = None, *, wait: bool = True, timeout: float | None = None) -> RestartResult:
        """Restart the unit; with ``wait``, block until the API answers again."""
        return _run(self._actl().restart(reason, wait=wait, timeout=timeout))

    def status(self) -> Status:
        """The unit's state and whether Ollama's API answers."""
        return _run(self._actl().status())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, even when called from inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="ollamactl-sync")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Deadline:
    """One total time budget shared by every step of an operation."""

    def __init__(self, total: float) -> None:
        self.total = total
        self.end = time.monotonic() + total

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


@asynccontextmanager
async def _deadline_scope(clock: _Deadline, what: str) -> AsyncIterator[None]:
    """Turn the overall deadline into TimedOut, whatever step was running."""
    try:
        async with asyncio.timeout(clock.left()):
            yield
    except TimeoutError:
        raise TimedOut(f"gave up after {clock.total:g}s (raise it with --timeout)", step=what) from None


def _check_timeout(value: float) -> float:
    from ollamactl.errors import UsageError

    if not (isinstance(value, (int, float)) and 0 < value <= 86400):
        raise UsageError(f"timeout must be a number of seconds in (0, 86400] (got {value!r})", key="timeout")
    return float(value)


def _died(state: UnitState, started: UnitState) -> bool:
    return (
        state.active_state in ("failed", "inactive", "deactivating")
        or state.sub_state == "auto-restart"
        or state.invocation_id != started.invocation_id
    )


def _restart_failed(state: UnitState, what: str, job_result: str) -> RestartFailed:
    return RestartFailed(
        f"{state.name} did not come back: {what} (Result={state.result}, "
        f"state {state.active_state}/{state.sub_state}); see: journalctl -u {state.name} -n 50",
        unit=state.name,
        job_result=job_result,
        result=state.result,
        active_state=state.active_state,
        sub_state=state.sub_state,
    )
