"""The restart flow, top to bottom, and the public API around it.

``AsyncController`` is the implementation; ``Controller`` runs it on a private
event loop for synchronous callers (the way httpx and ollama-python pair their
clients).  Settings come from ``load_config``; systemd is reached only through
``SystemdBus``; Ollama only through ``probe`` (HTTP) and ``journal`` (its
log); what the evidence means is decided in ``verdict``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

from ollamactl import probe, sockets
from ollamactl._log import audit, log
from ollamactl.budget import Budget
from ollamactl.config import Config, load_config
from ollamactl.errors import (
    BudgetExhausted,
    OllamactlError,
    RestartFailed,
    TimedOut,
    UnitFailed,
    UnitStopped,
    UsageError,
)
from ollamactl.journal import JournalFacts, JournalReader
from ollamactl.nss import current_user
from ollamactl.runtime import MAX_HISTORY, Restart, RuntimeDir, State
from ollamactl.systemd import SystemdBus, UnitState
from ollamactl.verdict import HEALTHY, Judge, Limits, Sample, Verdict

if TYPE_CHECKING:
    from ollamactl.models import ProbeReport, RestartResult, Status

T = TypeVar("T")
_POLL_FIRST = 0.02  # readiness: poll every 20 ms while a server usually binds its port...
_POLL_FAST_FOR = 2.0  # ...for this long...
_POLL_MAX = 0.25  # ...then back off to this
_POLL_GROWTH = 1.25
_UNIT_CHECK_EVERY = 0.1  # how often to ask systemd whether the new process died
# The watchdog waits this long for the shared lock, then restarts without it: longer than a legitimate
# holder keeps it (unit state + restart job of an Ollama that ignores SIGTERM: TimeoutStopSec=10s plus
# the start), short enough that a member holding the lock forever only delays recovery.
UNATTENDED_LOCK_WAIT = 30.0


@dataclass
class Unattended:
    """How an unattended restarter (the watchdog) restarts, trusting nothing members can write.

    Members can rewrite the shared history in the runtime directory and hold
    its lock.  A forged history must not make the watchdog believe its budget
    is used up, and a lock held forever must not stop recovery; so the budget
    is judged on ``history`` alone (this restarter's own restarts, wall-clock
    times, kept in its memory), and the lock is waited for at most
    ``lock_wait`` seconds before the restart goes ahead without it.  Its
    restarts are still written to the shared history (members' budget sees
    them), and coalescing still uses systemd's start time, which PID 1 reports.
    """

    history: list[float] = field(default_factory=list)
    lock_wait: float = UNATTENDED_LOCK_WAIT


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
        plain_results: bool = False,
        **settings: Any,
    ) -> None:
        self.config: Config = config or load_config(settings, config_file=config_file)
        self.plain_results = plain_results  # results as Draft, not pydantic models (see Draft)
        self._bus: SystemdBus | None = None
        self._journal: JournalReader | None = None  # kept between probes: it reads on from its cursor
        # Root acts by hand as the admin: the shared history, which any member can forge, is advisory for it.
        self._admin = os.geteuid() == 0

    def _finish(self, model: str, draft: Draft) -> Any:
        if self.plain_results:
            return draft
        from ollamactl import models

        return getattr(models, model)(**vars(draft))

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
        observed_at: float | None = None,
        unattended: Unattended | None = None,
        start: bool = False,
    ) -> RestartResult:
        """Restart the unit; with ``wait`` return only once the API answers again.

        ``observed_at`` (epoch seconds) is when the caller saw the wedge: if the
        unit has started since then, nothing is restarted (action "skipped"), so
        many detectors of one wedge cause one restart.  Callers serialise on a
        lock in the runtime directory, and a restart budget stops loops.
        ``unattended`` is for the watchdog (see Unattended): its own budget, and
        a bounded wait for the lock.

        Nobody fights the admin: a unit that is stopped raises UnitStopped, a
        failed one UnitFailed, and the restart is systemd's TryRestartUnit,
        which never starts a unit that stopped after our look.  ``start``:
        start a stopped unit too (RestartUnit; the polkit grant must allow it).

        Raises PermissionDenied, UnitNotFound, UnitMasked, UnitStopped, UnitFailed,
        BusUnavailable, BudgetExhausted, RestartFailed, TimedOut or RuntimeDirError
        (all OllamactlError).
        """
        cfg = self.config
        clock = _Deadline(cfg.timeout if timeout is None else _check_timeout(timeout))
        who = {"uid": os.getuid(), "user": current_user(), "pid": os.getpid()}
        audit_fields = dict(unit=cfg.unit, reason=reason, observed_at=observed_at, **who)
        log("INFO", "restart requested", **audit_fields)
        try:
            result = await self._restart(reason, wait, observed_at, clock, unattended, start)
        except OllamactlError as err:
            audit(f"restart of {cfg.unit} not done: {err.message}", outcome=err.kind, **audit_fields)
            raise
        audit(
            f"{result.action} {result.unit} (reason: {reason or '-'})",
            outcome=result.action,
            new_invocation=result.new_invocation_id,
            job_result=result.job_result,
            **audit_fields,
        )
        return result

    async def _restart(
        self,
        reason: str | None,
        wait: bool,
        observed_at: float | None,
        clock: _Deadline,
        unattended: Unattended | None,
        start: bool,
    ) -> RestartResult:
        unit = self.config.unit
        runtime = self.runtime
        result = Draft(
            ok=True,
            action="restarted", unit=unit, reason=reason, observed_at=observed_at, job=None, job_result=None,
            old_invocation_id=None, new_invocation_id=None, job_seconds=None, ready_seconds=None, api_version=None,
        )  # fmt: skip
        async with _deadline_scope(clock, "restart"), self._systemd() as bus:
            async with self._locked(runtime, clock, unattended):
                before = await bus.unit_state(unit, timeout=clock.left())
                before.check_loadable()
                if not start:
                    refuse_if_down(before)
                result.unit = before.name
                if observed_at is not None and before.started_since(observed_at):
                    log("INFO", "already restarted since the wedge was seen; skipping", unit=before.name)
                    result.action = "skipped"
                    after = before
                else:
                    history = self._check_budget(runtime, before.name, unattended)
                    await bus.subscribe()
                    started = time.monotonic()
                    result.job = await bus.restart_unit(before.name, start=start)
                    self._record(runtime, history, before.name, reason, unattended)
                    result.old_invocation_id = before.invocation_id
                    log("INFO", "restart job queued", unit=before.name, job=result.job)
                    if not wait:
                        result.action = "queued"
                        return self._finish("RestartResult", result)
                    result.job_result = await bus.wait_job(result.job, clock.left())
                    result.job_seconds = round(time.monotonic() - started, 4)
                    after = await bus.unit_state(before.name, timeout=clock.left())
                    if not start and after.active_state == "inactive":  # stopped between our look and the job
                        raise _stopped(after, "was stopped before the restart job ran; TryRestartUnit left it stopped")
                    if result.job_result != "done":
                        raise _restart_failed(
                            after, f"the restart job ended with '{result.job_result}'", result.job_result
                        )
            result.new_invocation_id = after.invocation_id
            if wait:
                result.api_version, ready = await self._wait_ready(bus, after, clock)
                result.ready_seconds = round(ready, 4)
        return self._finish("RestartResult", result)

    @property
    def runtime(self) -> RuntimeDir:
        return RuntimeDir(Path(self.config.runtime_dir), self.config.group)

    @asynccontextmanager
    async def _locked(
        self, runtime: RuntimeDir, clock: _Deadline, unattended: Unattended | None
    ) -> AsyncIterator[None]:
        """Hold the shared restart lock: until the deadline, or for the watchdog a bounded time, then without it."""
        if unattended is None:
            async with runtime.lock(clock.left()):
                yield
            return
        wait = min(unattended.lock_wait, clock.left() / 2)  # leave the restart itself at least half the time
        async with runtime.lock(wait, required=False) as held:
            if not held:
                log(
                    "WARNING",
                    f"another process held the restart lock on {runtime.path} for over {wait:g}s; "
                    f"restarting without it (see which: lslocks -o PID,COMMAND,PATH | grep {runtime.path})",
                    path=str(runtime.path),
                )
            yield

    def _check_budget(self, runtime: RuntimeDir, unit: str, unattended: Unattended | None) -> State:
        """Raise BudgetExhausted unless the budget allows a restart now; return the shared history read.

        Call under the lock, and pass the returned history to ``_record``.
        The budget is judged on the shared history, or for the watchdog on its own;
        root, acting by hand, is only warned (members can forge that history).
        """
        cfg = self.config
        state = runtime.read_state()
        history = list(unattended.history) if unattended else [r.at for r in state.for_unit(unit)]
        now = time.time()
        budget = Budget(cfg.max_restarts, cfg.restart_window, cfg.restart_backoff)
        allowed = budget.next_allowed(history, now)
        if allowed > now:
            recent = sum(1 for t in history if t > now - budget.window)
            at = time.strftime("%H:%M:%S", time.localtime(allowed))
            if self._admin and unattended is None:
                log(
                    "WARNING",
                    f"the shared history lists {recent} restart(s) of {unit} in the last {budget.window:g}s; any "
                    "member can write it, so it does not bind root: restarting",
                    unit=unit,
                )
                return state
            raise BudgetExhausted(
                f"not restarting {unit}: {recent} restart(s) in the last {budget.window:g}s; the next is allowed "
                f"at {at} (in {allowed - now:.0f}s); an admin can change max_restarts/restart_window/"
                f"restart_backoff in /etc/ollamactl/config.toml",
                unit=unit,
                next_allowed_at=round(allowed, 3),
                retry_after=round(allowed - now, 3),
            )
        return state

    def _record(
        self, runtime: RuntimeDir, state: State, unit: str, reason: str | None, unattended: Unattended | None
    ) -> None:
        """Add the restart just queued to the histories.

        The restart has happened by now, so a failure to write the shared
        history is logged, not raised: the caller must not retry it.
        """
        now = time.time()
        if unattended is not None:
            unattended.history.append(now)
            del unattended.history[:-MAX_HISTORY]
        state.restarts.append(Restart(at=now, unit=unit, uid=os.getuid(), pid=os.getpid(), reason=reason))
        try:
            runtime.write_state(state)
        except OllamactlError as err:
            log("WARNING", f"restarted {unit}, but could not record it: {err.message}", unit=unit)

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
        cfg = self.config
        endpoint = probe.parse_url(cfg.url)

        async def unit() -> UnitState:
            async with self._systemd() as bus:
                return await bus.unit_state(cfg.unit)

        state, live = await asyncio.gather(unit(), probe.liveness(endpoint, cfg.http_timeout))
        version, api_error = live.api_version, live.detail or None
        if state.load_state == "not-found":
            state.check_loadable()
        fields = asdict(state)
        fields["unit"] = fields.pop("name")
        del fields["inactive_exit_timestamp"], fields["cpu_usage_nsec"]  # internal evidence, not Status fields
        healthy = state.active_state == "active" and version is not None
        return self._finish(
            "Status",
            Draft(healthy=healthy, url=endpoint.url, api_ok=version is not None, api_version=version,
                  api_error=api_error, **fields),
        )  # fmt: skip

    async def probe(self, deep: bool = False, *, judge: Judge | None = None) -> ProbeReport:
        """Classify Ollama with the shared verdict (see ollamactl.verdict); never restarts.

        deep: also read each llama-server runner's /slots (read-only: no
        prompt, no load, no keep-alive), which answers only while its inference
        loop runs, so it sees the wedges that leave /api/version answering.
        Without ``judge``: a fresh verdict, sampled until it is decided (a
        suspected wedge confirmed or cleared), which takes a few seconds at most
        (about deep_confirm for a silent runner).  With ``judge`` (the
        watchdog's): one sample, judged with the streaks that judge keeps.
        The report's ``evidence`` says in one line what decided the outcome.
        """
        cfg = self.config
        endpoint = probe.parse_url(cfg.url)
        deep = deep and cfg.deep_probe != "off"
        once = judge is not None
        judge = judge or Judge(Limits.from_config(cfg))
        give_up = (
            time.monotonic()
            + cfg.deep_confirm
            + cfg.watch_failure_threshold
            * (cfg.watch_period + max(cfg.probe_timeout, cfg.deep_timeout) + cfg.http_timeout)
        )
        samples = 0
        async with self._systemd() as bus:
            while True:
                sample = await self._sample(bus, endpoint, deep)
                verdict = judge.observe(sample)
                samples += 1
                if once or not verdict.pending or time.monotonic() >= give_up:
                    break
                await asyncio.sleep(cfg.watch_period)
        return self._finish("ProbeReport", _report(verdict, sample, endpoint, cfg.model if deep else None, samples))

    async def _sample(self, bus: SystemdBus, endpoint: probe.Endpoint, deep: bool) -> Sample:
        """One round of evidence: the unit, then (if it is active) the probes, then the journal."""
        cfg = self.config
        at = time.time()
        state = await bus.unit_state(cfg.unit)
        if state.active_state != "active":
            return Sample(at, state)
        reader = self._journal or JournalReader(state.name, timeout=cfg.http_timeout)
        self._journal = reader
        if deep and reader.facts.invocation_id != state.invocation_id:
            await reader.update(state.invocation_id)  # a new invocation: its runners' ports come from here
        ports = _runner_ports(reader.facts, endpoint) if deep else []
        live, ps, *runners = await asyncio.gather(
            probe.liveness(endpoint, cfg.probe_timeout),
            probe.loaded_models(endpoint, cfg.deep_timeout) if deep else _nothing(),
            *(probe.runner(port, cfg.deep_timeout) for port in ports),
        )
        facts = None
        if deep or live.outcome != probe.HEALTHY:  # completions up to now, and loads
            facts = await reader.update(state.invocation_id)
        note = ""
        if deep and cfg.model and ps is not None and ps.status == probe.OK:
            wanted = _model_name(cfg.model)
            if all(_model_name(m.name) != wanted for m in ps.models):
                note, runners = f"model {cfg.model} is not loaded: nothing to deep-probe", []
        if deep and not ports and not note:
            note = "no runner found to deep-probe"
            if facts is not None and not facts.readable:
                note += f" ({facts.problem})"
        return Sample(at, state, live, ps, tuple(runners), facts, deep, note, time.time())


async def _nothing() -> None:
    return None


def _model_name(name: str) -> str:
    """A model name as /api/ps shows it: "llama3" is "llama3:latest"."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _runner_ports(facts: JournalFacts, endpoint: probe.Endpoint) -> list[int]:
    """The llama-server ports to ask: from the journal, else the kernel's list of listening sockets."""
    if facts.readable or facts.entries:  # the journal (even if its last read failed): it names them exactly
        return sorted(facts.runners)
    return sockets.runner_ports(endpoint.port)


def _report(verdict: Verdict, s: Sample, endpoint: probe.Endpoint, model: str | None, samples: int) -> Draft:
    """The ProbeReport fields of a verdict and the last sample it was made from."""
    live, unit = s.live, s.unit
    deep_seconds = [r.seconds for r in s.runners] + ([s.ps.seconds] if s.ps is not None else [])
    return Draft(
        outcome=verdict.outcome,
        healthy=verdict.outcome == HEALTHY,
        exit_code=verdict.exit_code,
        evidence=verdict.evidence,
        confirmed=verdict.confirmed,
        since=verdict.since,
        samples=samples,
        url=endpoint.url,
        liveness_seconds=round(live.seconds, 4) if live else None,
        deep_seconds=round(max(deep_seconds), 4) if deep_seconds else None,
        model=model,
        detail=live.detail if live else "",
        api_version=live.api_version if live else None,
        unit=unit.name,
        active_state=unit.active_state,
        sub_state=unit.sub_state,
        result=unit.result,
        started_at=unit.started_at,
    )


def refuse_if_down(state: UnitState) -> None:
    """Raise UnitFailed / UnitStopped for a unit that is not ours to (re)start: an admin's stop, a failure."""
    name = state.name
    if state.active_state == "failed" or (state.active_state == "inactive" and state.result not in (None, "success")):
        raise UnitFailed(
            f"{name} failed (Result={state.result}); not restarting over a failure an admin should see; fix: "
            f"sudo systemctl reset-failed {name} && sudo systemctl start {name} (see: journalctl -u {name} -n 50)",
            unit=name,
            result=state.result,
            active_state=state.active_state,
            sub_state=state.sub_state,
        )
    if state.active_state == "inactive":
        raise _stopped(state, "is stopped (an admin stopped it?)")


def _stopped(state: UnitState, what: str) -> UnitStopped:
    name = state.name
    return UnitStopped(
        f"{name} {what}; start it with: sudo systemctl start {name} (or pass --start if your grant allows start)",
        unit=name,
        result=state.result,
        active_state=state.active_state,
        sub_state=state.sub_state,
    )


class Draft(SimpleNamespace):
    """A result's fields before they become a pydantic model.

    With ``plain_results`` they stay as they are, with the same fields and
    the same ``to_dict()``: the long-running watchdog saves the ~14 MiB that
    pydantic 2 models cost, and the CLI, which only prints them, the time.
    """

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Controller:
    """The synchronous face of AsyncController: same settings, same errors."""

    def __init__(
        self,
        *,
        config: Config | None = None,
        config_file: str | os.PathLike[str] | None = None,
        plain_results: bool = False,
        **settings: Any,
    ) -> None:
        self.config: Config = config or load_config(settings, config_file=config_file)
        self.plain_results = plain_results

    def _actl(self) -> AsyncController:
        return AsyncController(config=self.config, plain_results=self.plain_results)

    def restart(
        self,
        reason: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        observed_at: float | None = None,
        start: bool = False,
    ) -> RestartResult:
        """Restart the unit (see AsyncController.restart); with ``wait``, block until the API answers."""
        return _run(self._actl().restart(reason, wait=wait, timeout=timeout, observed_at=observed_at, start=start))

    def status(self) -> Status:
        """The unit's state and whether Ollama's API answers."""
        return _run(self._actl().status())

    def probe(self, deep: bool = False) -> ProbeReport:
        """Classify Ollama's health (see AsyncController.probe)."""
        return _run(self._actl().probe(deep))


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
