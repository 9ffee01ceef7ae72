"""The restart flow, top to bottom, and the public API around it.

``AsyncController`` is the implementation; ``Controller`` runs it on a private
event loop for synchronous callers (the way httpx and ollama-python pair their
clients).  Settings come from ``load_config``; systemd is reached only through
``SystemdBus``; Ollama only through ``probe`` (HTTP) and ``journal`` (its
log); what the evidence means is decided in ``verdict``.  Results are the
classes declared in ``models``, built here directly.

Both controllers take transports, as httpx's clients take ``transport=``, so
the whole flow runs against in-memory fakes in the unit tests:
``dbus_transport`` makes the D-Bus connection that ``SystemdBus`` talks
through (dbus-next's ``MessageBus`` by default), and ``http_transport`` sends
the HTTP requests of ``probe`` (see ``probe.Transport``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ollamactl import late, probe, sockets, unitenv
from ollamactl._log import log
from ollamactl.budget import Budget
from ollamactl.config import DEFAULT_CONFIG_FILE, TIMEOUT_RANGE, Config, Instance, in_timeout_range, load_config
from ollamactl.errors import (
    BudgetExhausted,
    BusUnavailable,
    OllamactlError,
    RestartFailed,
    TimedOut,
    UnitFailed,
    UnitStopped,
    UrlUnknown,
    UsageError,
)
from ollamactl.models import History, Instances, ProbeReport, RestartResult, Status
from ollamactl.runtime import MAX_HISTORY, HeldLock, Restart, RuntimeDir, State
from ollamactl.systemd import SystemdBus, UnitState
from ollamactl.text import clean

if TYPE_CHECKING:  # the restart path does not need the verdict or the journal reader: imported where used
    from ollamactl.journal import JournalReader
    from ollamactl.verdict import Judge, LoadWait, Sample, Verdict

T = TypeVar("T")
_UNIT_CHECK_EVERY = 0.1  # how often to ask systemd whether the new process died (concurrently with the polls)
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


class MessageBusLike(Protocol):
    """What SystemdBus needs of a D-Bus connection: the part of dbus-next's ``MessageBus`` it uses."""

    async def connect(self) -> MessageBusLike: ...  # connect (and authenticate); returns the connected bus
    async def call(self, msg: Any) -> Any: ...  # one method call: its reply Message (or an ERROR one)
    def add_message_handler(self, handler: Callable[[Any], Any]) -> None: ...  # signals (JobRemoved)
    def disconnect(self) -> None: ...


#: Makes one (not yet connected) D-Bus connection to the system bus, e.g. ``lambda: MessageBus(...)``.
DBusTransport = Callable[[], MessageBusLike]


class _Client:
    """The settings and transports both controllers take (one ``__init__`` for both)."""

    def __init__(
        self,
        *,
        config: Config | None = None,
        config_file: str | os.PathLike[str] | None = None,
        dbus_transport: DBusTransport | None = None,
        http_transport: probe.Transport | None = None,
        **settings: Any,
    ) -> None:
        """Settings: built-in defaults < /etc/ollamactl/config.toml (or ``config_file``) < OLLAMACTL_*
        variables < keyword arguments (unit, url, timeout, bus_timeout, ...); or a ready ``config``.

        ``dbus_transport``: makes the system-bus connection (default: dbus-next's MessageBus);
        ``http_transport``: sends Ollama's HTTP requests (default: a fresh HTTP/1.1 connection each).
        Both are for tests and embedding, as httpx's ``transport=``.
        """
        self.config: Config = config or load_config(settings, config_file=config_file)
        self.dbus_transport = dbus_transport
        self.http_transport = http_transport


class AsyncController(_Client):
    """Restart and inspect Ollama's systemd unit from asyncio code.

    Settings: built-in defaults < /etc/ollamactl/config.toml < OLLAMACTL_*
    variables < keyword arguments (unit, url, timeout, bus_timeout, ...).
    Use ``async with`` to keep one bus connection for several calls.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bus: SystemdBus | None = None
        self._journal: JournalReader | None = None  # kept between probes: it reads on from its cursor
        self._url: tuple[Any, str] | None = None  # (the unit's environment, the URL it gives): read once per start
        # Root acts by hand as the admin: the shared history, which any member can forge, is advisory for it.
        self._admin = os.geteuid() == 0

    async def __aenter__(self) -> AsyncController:
        self._bus = await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    async def _connect(self) -> SystemdBus:
        bus = SystemdBus(call_timeout=self.config.bus_timeout, group=self.config.group, transport=self.dbus_transport)
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
        progress: Progress | None = None,
        verdict: str | None = None,
        evidence: str | None = None,
        lock: HeldLock | None = None,
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
        ``progress`` is called with one line saying what the restart waits for
        (the lock, the stop with the time left until SIGKILL, the start, the
        API), on each change and every half second meanwhile: the CLI's TTY line.
        ``verdict`` and ``evidence``: the outcome that called for the restart
        (e.g. "deep-wedged") and its one line of evidence, if the caller judged
        Ollama first; they are recorded with the decision (``ollamactl history``).
        ``lock``: the restart lock, taken already (``runtime.take_turn``: the
        CLI takes it before importing the bus); released here, used or not.

        With ``wait`` and the URL read from the unit, an environment file that
        may set OLLAMA_HOST but cannot be read raises UrlUnknown before anything
        is restarted (the wait could not tell when Ollama is back); without
        ``wait`` the URL is not needed, and the restart goes ahead.

        Raises PermissionDenied, UnitNotFound, UnitMasked, UnitStopped, UnitFailed,
        BusUnavailable, BudgetExhausted, RestartFailed, TimedOut, RuntimeDirError
        or UrlUnknown (all OllamactlError).
        """
        cfg = self.config
        clock = _Deadline(cfg.timeout if timeout is None else _check_timeout(timeout))
        audit_fields = late.requested(cfg, reason, observed_at, verdict=verdict, evidence=evidence)
        log("INFO", "restart requested", **audit_fields)
        runtime = RuntimeDir(Path(cfg.runtime_dir), cfg.group, held=lock)
        try:
            result = await self._restart(
                runtime, reason, wait, observed_at, clock, unattended, start, progress or _quiet
            )
        except OllamactlError as err:
            late.not_done(err, audit_fields)
            raise
        finally:
            if lock is not None:
                lock.close()  # if the restart did not take it over
        late.journal(result, audit_fields)
        return result

    async def _restart(
        self,
        runtime: RuntimeDir,
        reason: str | None,
        wait: bool,
        observed_at: float | None,
        clock: _Deadline,
        unattended: Unattended | None,
        start: bool,
        progress: Progress,
    ) -> RestartResult:
        job = job_result = old_invocation_id = job_seconds = ready_seconds = api_version = None
        # A late detector first: PID 1's own record (no D-Bus) may show a start since the wedge was seen.
        skipped = await late.skip(
            self.config, reason, observed_at, wait=wait, timeout=clock.left(), transport=self.http_transport
        )
        if skipped is not None:
            log("INFO", "already restarted since the wedge was seen (PID 1's record); skipping", unit=skipped.unit)
            return skipped
        async with _deadline_scope(clock, "restart"), self._systemd() as bus:
            # Coalescing first without the lock: once one detector's restart is done, the many others that
            # saw the same wedge go on at once instead of queueing on the lock one by one.
            before = await self._look(bus, clock, start) if observed_at is not None else None
            if before is not None and observed_at is not None and before.started_since(observed_at):
                action, after = "skipped", before
            else:
                progress(f"waiting for the restart lock on {runtime.path}")
                async with self._locked(runtime, clock, unattended):
                    before = await self._look(bus, clock, start)
                    if wait:  # the wait needs Ollama's URL: an unknown one (UrlUnknown) refuses before the restart
                        self._endpoint(before)
                    if observed_at is not None and before.started_since(observed_at):
                        action, after = "skipped", before
                    else:
                        history = self._check_budget(runtime, before.name, unattended)
                        if wait:
                            await bus.subscribe()  # JobRemoved says when the job ends; not needed just to queue it
                        started = time.monotonic()
                        job = await bus.restart_unit(before.name, start=start)
                        self._record(runtime, history, before.name, reason, unattended)
                        old_invocation_id = before.invocation_id
                        log("INFO", "restart job queued", unit=before.name, job=job)
                        if not wait:
                            return RestartResult(
                                action="queued", unit=before.name, reason=reason, observed_at=observed_at, job=job,
                                old_invocation_id=old_invocation_id,
                            )  # fmt: skip
                        unit = before.name
                        async with _ticking(progress, lambda: self._job_step(bus, unit, clock)):
                            job_result = await bus.wait_job(job, clock.left())
                        job_seconds = round(time.monotonic() - started, 4)
                        after = await bus.unit_state(before.name, timeout=clock.left())
                        if not start and after.active_state == "inactive":  # stopped between our look and the job
                            raise _stopped(
                                after, "was stopped before the restart job ran; TryRestartUnit left it stopped"
                            )
                        if job_result != "done":
                            raise _restart_failed(after, f"the restart job ended with '{job_result}'", job_result)
                        action = "restarted"
            if action == "skipped":
                log("INFO", "already restarted since the wedge was seen; skipping", unit=before.name)
            if wait:
                url = self._endpoint(after).url
                async with _ticking(progress, lambda: _constant(f"waiting for Ollama's API at {url}")):
                    api_version, ready = await self._wait_ready(bus, after, clock)
                ready_seconds = round(ready, 4)
        return RestartResult(
            action=action, unit=before.name, reason=reason, observed_at=observed_at, job=job, job_result=job_result,
            old_invocation_id=old_invocation_id, new_invocation_id=after.invocation_id, job_seconds=job_seconds,
            ready_seconds=ready_seconds, api_version=api_version,
        )  # fmt: skip

    async def _look(self, bus: SystemdBus, clock: _Deadline, start: bool) -> UnitState:
        """The unit's state, if it is ours to restart: UnitNotFound/UnitMasked, UnitStopped/UnitFailed otherwise.

        A unit that is down with a job pending is being (re)started, e.g. by
        another detector's restart between its stop and its start (or after a
        SIGKILL, with Result=timeout): not an admin's stop nor a failure to
        respect, so we wait for that job to be taken up, then judge.
        """
        state = await bus.unit_state(self.config.unit, timeout=clock.left())
        while state.job_id is not None and state.active_state in ("inactive", "failed"):
            await asyncio.sleep(min(0.02, clock.left()))
            state = await bus.unit_state(self.config.unit, timeout=clock.left())
        state.check_loadable()
        if not start:
            refuse_if_down(state)
        return state

    async def _job_step(self, bus: SystemdBus, unit: str, clock: _Deadline) -> str:
        """What the restart job is doing now, for the progress line: stopping (and when SIGKILL comes), starting."""
        s = await bus.unit_state(unit, timeout=clock.left())
        if s.active_state == "deactivating":
            if s.timeout_stop is not None and s.state_change_timestamp is not None:
                left = s.state_change_timestamp + s.timeout_stop - time.time()
                return f"stopping {s.name} (SIGKILL in {max(left, 0):.0f}s if it ignores SIGTERM)"
            return f"stopping {s.name}"
        if s.active_state == "activating":
            return f"starting {s.name}"
        return f"restarting {s.name}"

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
        """Poll /api/version until it answers; fail fast if the new process dies.

        systemd is asked whether the new process died every _UNIT_CHECK_EVERY
        seconds in a task of its own, so no poll waits for a bus round trip.
        """
        endpoint = self._endpoint(started)
        t0 = time.monotonic()
        delay = probe.READY_POLL_FIRST
        last_error = "no answer yet"
        death = asyncio.ensure_future(self._until_died(bus, started, clock))
        try:
            while True:
                if death.done():
                    death.result()  # raises RestartFailed (or the bus's error)
                try:
                    version = await probe.api_version(
                        endpoint, min(self.config.http_timeout, clock.left()), transport=self.http_transport
                    )
                    return version, time.monotonic() - t0
                except (probe.HTTPError, TimeoutError) as exc:
                    last_error = str(exc) or f"no answer within {self.config.http_timeout:g}s"
                if clock.left() <= 0:
                    raise TimedOut(
                        f"{started.name} restarted, but Ollama at {endpoint.url} did not answer within "
                        f"{clock.total:g}s ({last_error}); see: journalctl -u {started.name} -n 50",
                        step="readiness",
                        url=endpoint.url,
                    )
                await asyncio.wait([death], timeout=min(delay, clock.left()))  # a sleep that a death cuts short
                delay = probe.next_ready_poll(delay, time.monotonic() - t0)
        finally:
            death.cancel()
            if death.done() and not death.cancelled():
                death.exception()  # retrieved: the API answered first, or the death was raised above

    async def _until_died(self, bus: SystemdBus, started: UnitState, clock: _Deadline) -> None:
        """Raise RestartFailed once systemd says the process ``started`` stopped (or was replaced)."""
        while True:
            state = await bus.unit_state(started.name, timeout=clock.left())
            if _died(state, started):
                raise _restart_failed(state, "the unit stopped again while starting", "done")
            await asyncio.sleep(_UNIT_CHECK_EVERY)

    async def status(self) -> Status:
        """The unit's state and whether Ollama's API answers (never restarts)."""
        cfg = self.config

        async def unit() -> UnitState:
            async with self._systemd() as bus:
                return await bus.unit_state(cfg.unit)

        if cfg.url_from_unit:  # the URL is in the unit's environment: ask systemd first
            state = await unit()
            endpoint = self._endpoint(state)
            live = await probe.liveness(endpoint, cfg.http_timeout, transport=self.http_transport)
        else:
            endpoint = probe.parse_url(cfg.url)
            state, live = await asyncio.gather(
                unit(), probe.liveness(endpoint, cfg.http_timeout, transport=self.http_transport)
            )
        version, api_error = live.api_version, live.detail or None
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
            instance=cfg.instance,
        )

    def for_instance(self, inst: Instance) -> AsyncController:
        """A controller of ``inst`` (its unit, URL and model), with these settings and transports."""
        return AsyncController(
            config=self.config.for_instance(inst),
            dbus_transport=self.dbus_transport,
            http_transport=self.http_transport,
        )

    async def history(self, since: float | None = None, *, every_unit: bool = False) -> History:
        """Every restart decision recorded about this unit (every unit with ``every_unit``) since ``since``.

        Who, when, why, the outcome, the verdict and its evidence, the time to
        recover and the invocation that was replaced, from the journal where
        this user may read it (root, groups systemd-journal and adm), else the
        restarts in the shared history, marked unverified (see ollamactl.history).
        Raises PermissionDenied for a user who may read neither.
        """
        from ollamactl.history import read_history

        return await read_history(self.config, since=since, every_unit=every_unit)

    async def url(self) -> str:
        """The URL this unit's Ollama is asked at: the one given, else the unit's own OLLAMA_HOST."""
        if not self.config.url_from_unit:
            return probe.parse_url(self.config.url).url
        async with self._systemd() as bus:
            return self._endpoint(await bus.unit_state(self.config.unit)).url

    async def instances(self) -> Instances:
        """Every configured instance's status (or this unit's, with no [instances] tables), asked concurrently.

        An instance whose unit cannot be read (not found, the bus refused) is
        listed with load_state "error" and the reason, so one bad entry does not
        hide the others.
        """
        cfg = self.config

        async def one(inst: Instance) -> Status:
            sub = self.for_instance(inst)
            try:
                return await sub.status()
            except BusUnavailable:
                raise  # no bus, no instances: one error, not one per instance
            except OllamactlError as err:
                return Status(
                    healthy=False, unit=inst.unit, load_state="error", active_state="unknown", sub_state="unknown",
                    url=inst.url or "", api_ok=False, api_error=err.message, instance=sub.config.instance,
                )  # fmt: skip

        found = await asyncio.gather(*(one(inst) for inst in cfg.all_instances()))
        return Instances(healthy=all(s.healthy for s in found), instances=tuple(found))

    async def metrics(self, deep: bool = False) -> str:
        """Prometheus metrics of every instance from one probe each (see ollamactl.metrics), as text.

        The restart budget left comes from the shared history, which only
        members (and root) can read; without it that series is left out.
        """
        from ollamactl.budget import Budget
        from ollamactl.metrics import InstanceMetrics, render

        cfg = self.config

        async def one(inst: Instance) -> InstanceMetrics:
            sub = self.for_instance(inst)
            at = time.time()
            try:
                report = await sub.probe(deep=deep)
            except UrlUnknown as err:  # no outcome to show (a guess could be another server's): the others still are
                log("WARNING", err.message, unit=inst.unit)
                return InstanceMetrics(inst.name, inst.unit, None, None, at, None)
            m = InstanceMetrics(inst.name, report.unit or inst.unit, report.outcome, None, at, None)
            try:
                history = [r.at for r in sub.runtime.read_state().for_unit(m.unit)]
            except OllamactlError:
                return m  # not a member: the shared history is not ours to read
            budget = Budget(cfg.max_restarts, cfg.restart_window, cfg.restart_backoff)
            m.budget_remaining = budget.remaining(history, time.time())
            return m

        return render(await asyncio.gather(*(one(inst) for inst in cfg.all_instances())))

    async def probe(
        self, deep: bool = False, *, judge: Judge | None = None, wait: LoadWait | None = None
    ) -> ProbeReport:
        """Classify Ollama with the shared verdict (see ollamactl.verdict); never restarts.

        deep: also read each llama-server runner's /slots (read-only: no
        prompt, no load, no keep-alive), which answers only while its inference
        loop runs, so it sees the wedges that leave /api/version answering.
        Without ``judge``: a fresh verdict, sampled until it is decided (a
        suspected wedge confirmed or cleared), which takes a few seconds at most
        (about deep_confirm for a silent runner).  With ``judge`` (the
        watchdog's): one sample, judged with the streaks that judge keeps.
        The report's ``evidence`` says in one line what decided the outcome.
        ``wait``: the caller's own request that needs a load (model, since when),
        the only evidence of a load that never starts (ollama #17408): with it,
        a healthy server can be ``load-stuck`` (see verdict.LoadWait).
        """
        cfg = self.config
        deep = deep and cfg.deep_probe != "off"
        once = judge is not None
        from ollamactl.verdict import Judge, Limits

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
                sample, endpoint = await self._sample(bus, deep)
                if wait is not None:
                    sample.wait = wait
                verdict = judge.observe(sample)
                samples += 1
                if once or not verdict.pending or time.monotonic() >= give_up:
                    break
                await asyncio.sleep(cfg.watch_period)
        return _report(verdict, sample, endpoint, cfg.model if deep else None, samples)

    async def probe_load(self, model: str) -> ProbeReport:
        """Load ``model`` (Ollama's load-only generate) and judge the wait; never restarts.

        Disturbing, unlike ``probe``: it may load the model, and evict another to make room.  Healthy once
        the load answers; if it has not within ``load_stuck_after``, the verdict with this request as its
        LoadWait: ``load-stuck`` if the load never started while every loaded runner sat idle (#17408),
        ``busy`` while it waits for a busy model, ``loading`` while it loads.  The request is then dropped.
        """
        from ollamactl.verdict import LoadWait

        cfg = self.config
        async with self._systemd() as bus:
            state = await bus.unit_state(cfg.unit)
        endpoint = self._endpoint(state)
        wait = LoadWait(model, time.time())
        body = {"model": model}  # no prompt: Ollama loads the model and answers done_reason "load"
        t0 = time.monotonic()
        name = clean(model, 120)
        try:
            resp = await probe.request(
                endpoint,
                "POST",
                "/api/generate",
                timeout=cfg.load_stuck_after,
                body=body,
                transport=self.http_transport,
            )
        except TimeoutError:
            return await self.probe(deep=True, wait=wait)  # it waited load_stuck_after: what holds it?
        except probe.HTTPError as exc:
            report = await self.probe(deep=True)
            return dataclasses.replace(report, evidence=f"the load of {name} failed ({exc}); {report.evidence}")
        took = time.monotonic() - t0
        report = await self.probe(deep=True)
        if resp.status == 404:
            raise UsageError(f"Ollama has no model {name} (HTTP 404): pull it first (ollama pull {name})")
        if resp.status != 200:
            answer = clean(resp.body[:400].decode("utf-8", "replace"), 160)
            what = f"POST /api/generate for {name} answered HTTP {resp.status} ({answer})"
            return dataclasses.replace(report, evidence=f"{what}; {report.evidence}")
        return dataclasses.replace(report, evidence=f"{name} loaded in {took:.1f}s; {report.evidence}")

    async def _sample(self, bus: SystemdBus, deep: bool) -> tuple[Sample, probe.Endpoint]:
        """One round of evidence: the unit, then (if it is active) the probes, then the journal; and the URL."""
        from ollamactl.verdict import Sample

        cfg = self.config
        at = time.time()
        state = await bus.unit_state(cfg.unit)
        endpoint = self._endpoint(state)
        if state.active_state != "active":
            return Sample(at, state), endpoint
        from ollamactl.journal import JournalReader
        from ollamactl.runners import own_runners, runner_candidates

        reader = self._journal or JournalReader(state.name, timeout=cfg.http_timeout)
        self._journal = reader
        if deep and reader.facts.invocation_id != state.invocation_id:
            await reader.update(state.invocation_id)  # a new invocation: its runners' ports come from here
        found = sockets.listeners() if deep else []  # the kernel's listening sockets, for runner identity
        ports = runner_candidates(reader.facts, endpoint, found) if deep else []
        live, ps, *runners = await asyncio.gather(
            probe.liveness(endpoint, cfg.probe_timeout, transport=self.http_transport),
            probe.loaded_models(endpoint, cfg.deep_timeout, transport=self.http_transport) if deep else _nothing(),
            *(probe.runner(port, cfg.deep_timeout, transport=self.http_transport) for port in ports),
        )
        facts = None
        if deep or live.outcome != probe.HEALTHY:  # completions up to now, and loads
            facts = await reader.update(state.invocation_id)
        note, ignored = "", ()
        if deep:  # only answers from Ollama's own runners count (issue 14 §2)
            mine = own_runners(ports, reader.facts, endpoint, ps, found)
            runners, ignored = [r for r in runners if r.port in mine.ports], mine.ignored
            ports = list(mine.ports)
        if deep and cfg.model and ps is not None and ps.status == probe.OK:
            wanted = probe.model_name(cfg.model)
            if all(probe.model_name(m.name) != wanted for m in ps.models):
                note, runners = f"model {cfg.model} is not loaded: nothing to deep-probe", []
        if deep and not ports and not note:
            note = "no runner of Ollama's found to deep-probe" if ignored else "no runner found to deep-probe"
            if facts is not None and not facts.readable:
                note += f" ({facts.problem})"
        sample = Sample(at, state, live, ps, tuple(runners), facts, deep, note, time.time(), ignored=ignored)
        return sample, endpoint

    def _endpoint(self, state: UnitState) -> probe.Endpoint:
        """Where this unit's Ollama listens: the URL given, else the OLLAMA_HOST of the unit's own environment.

        Read from ``state`` (systemd's Environment and EnvironmentFiles) and
        its files again only when they, or the invocation, change: a server
        reads its environment when it starts.  If a file that may set it (one
        after the value's source) cannot be read, raises UrlUnknown: a guess
        would probe, and restart, another instance's server or a healthy one.
        """
        cfg = self.config
        if not cfg.url_from_unit:
            return probe.parse_url(cfg.url)
        key = (state.name, state.invocation_id, state.environment, state.environment_files)
        if self._url is None or self._url[0] != key:
            found = unitenv.lookup("OLLAMA_HOST", state.environment, state.environment_files)
            if found.unknown:  # not cached: read again next time, so making the file readable is enough
                raise _url_unknown(cfg, state.name, found.unknown)
            url = cfg.url
            for problem in found.problems:  # files before the one that set it: overridden, whatever they say
                log("DEBUG", f"{state.name}: {problem}; OLLAMA_HOST is set after it, in {found.where}")
            if found.value is not None and found.value.strip():
                try:
                    url = probe.server_url(found.value)
                except ValueError as exc:
                    log("WARNING", f"{state.name}: OLLAMA_HOST from {found.where} is not usable ({exc}); using {url}")
            log("DEBUG", "Ollama's URL", unit=state.name, url=url, source=found.where or "default")
            self._url = (key, url)
        return probe.parse_url(self._url[1])


def _url_unknown(cfg: Config, unit: str, unreadable: tuple[tuple[str, str], ...]) -> UrlUnknown:
    """The refusal when a file that may set OLLAMA_HOST cannot be read: what, and the two ways out."""
    paths = " ".join(path for path, _ in unreadable)
    what = ", ".join(f"{path} ({why})" for path, why in unreadable)
    where = f"[instances.{cfg.instance}] of {DEFAULT_CONFIG_FILE}" if cfg.instance else f"{DEFAULT_CONFIG_FILE}"
    fix = (
        f"make it readable by group {cfg.group} (sudo chgrp {cfg.group} {paths} && sudo chmod 640 {paths}), "
        f'or set url = "http://HOST:PORT" in {where}'
    )
    return UrlUnknown(
        f"{unit}: cannot read {what}, which may set OLLAMA_HOST: the URL cannot be known, so nothing is probed "
        f"or restarted; fix: {fix}",
        unit=unit,
        files=[path for path, _ in unreadable],
        fix=fix,
    )


async def _nothing() -> None:
    return None


def _report(verdict: Verdict, s: Sample, endpoint: probe.Endpoint, model: str | None, samples: int) -> ProbeReport:
    """The ProbeReport of a verdict and the last sample it was made from."""
    from ollamactl import verdict as verdict_mod

    live, unit = s.live, s.unit
    deep_seconds = [r.seconds for r in s.runners] + ([s.ps.seconds] if s.ps is not None else [])
    return ProbeReport(
        outcome=verdict.outcome,
        healthy=verdict.outcome == verdict_mod.HEALTHY,
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


class Controller(_Client):
    """The synchronous face of AsyncController: same settings, same errors, same results.

    Each call runs on an event loop of its own, connecting to the bus for
    that call; ``with Controller() as c:`` keeps one loop and one bus
    connection for every call in the block.  It must not be called from
    inside a running event loop, which it would block for up to the restart
    timeout: there it raises UsageError, which points to AsyncController.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._runner: asyncio.Runner | None = None
        self._actl: AsyncController | None = None

    def __enter__(self) -> Controller:
        _refuse_inside_a_loop("with Controller()")
        if self._runner is not None:
            raise UsageError("this Controller is already in a with-block; it is not reentrant", api="Controller")
        runner, actl = asyncio.Runner(), self._async()
        try:
            runner.run(actl.__aenter__())
        except BaseException:
            runner.close()
            raise
        self._runner, self._actl = runner, actl
        return self

    def __exit__(self, *exc: object) -> None:
        runner, actl = self._runner, self._actl
        self._runner = self._actl = None
        if runner is None or actl is None:
            return
        try:
            runner.run(actl.__aexit__(*exc))
        finally:
            runner.close()

    def _async(self) -> AsyncController:
        return AsyncController(
            config=self.config, dbus_transport=self.dbus_transport, http_transport=self.http_transport
        )

    def _call(self, name: str, call: Callable[[AsyncController], Awaitable[T]]) -> T:
        _refuse_inside_a_loop(f"Controller.{name}()")

        async def run(actl: AsyncController) -> T:
            return await call(actl)

        if self._runner is not None and self._actl is not None:
            return self._runner.run(run(self._actl))
        return asyncio.run(run(self._async()))

    def restart(
        self,
        reason: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        observed_at: float | None = None,
        start: bool = False,
        progress: Progress | None = None,
        verdict: str | None = None,
        evidence: str | None = None,
        lock: HeldLock | None = None,
    ) -> RestartResult:
        """Restart the unit (see AsyncController.restart); with ``wait``, block until the API answers."""
        return self._call(
            "restart",
            lambda a: a.restart(
                reason, wait=wait, timeout=timeout, observed_at=observed_at, start=start, progress=progress,
                verdict=verdict, evidence=evidence, lock=lock,
            ),
        )  # fmt: skip

    def status(self) -> Status:
        """The unit's state and whether Ollama's API answers."""
        return self._call("status", lambda a: a.status())

    def probe(self, deep: bool = False, *, wait: LoadWait | None = None) -> ProbeReport:
        """Classify Ollama's health (see AsyncController.probe)."""
        return self._call("probe", lambda a: a.probe(deep, wait=wait))

    def probe_load(self, model: str) -> ProbeReport:
        """Ask Ollama to load ``model`` and judge the wait (see AsyncController.probe_load): it may evict another."""
        return self._call("probe_load", lambda a: a.probe_load(model))

    def instances(self) -> Instances:
        """Every instance's status (see AsyncController.instances)."""
        return self._call("instances", lambda a: a.instances())

    def history(self, since: float | None = None, *, every_unit: bool = False) -> History:
        """Every restart decision recorded (see AsyncController.history)."""
        return self._call("history", lambda a: a.history(since, every_unit=every_unit))

    def metrics(self, deep: bool = False) -> str:
        """Prometheus metrics of every instance from one probe each (see AsyncController.metrics)."""
        return self._call("metrics", lambda a: a.metrics(deep))


def _refuse_inside_a_loop(what: str) -> None:
    """Raise UsageError if called from a coroutine: a blocking call there would stall the caller's loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise UsageError(
        f"{what} was called inside a running asyncio event loop, which it would block (for up to the restart "
        "timeout); in async code use AsyncController: async with AsyncController() as c: await c.restart()",
        api="Controller",
    )


#: The progress hook: called with one line saying what a restart waits for (see AsyncController.restart).
Progress = Callable[[str], None]
_TICK = 0.5  # seconds between progress updates while waiting


def _quiet(line: str) -> None:
    """The progress hook when nobody asked for one."""


async def _constant(line: str) -> str:
    return line


@asynccontextmanager
async def _ticking(progress: Progress, step: Callable[[], Awaitable[str]]) -> AsyncIterator[None]:
    """Call ``progress(await step())`` now and every _TICK seconds until the block ends (not when quiet)."""
    if progress is _quiet:
        yield
        return

    async def tick() -> None:
        while True:
            try:
                progress(await step())
            except OllamactlError:  # the line is a courtesy: the block itself reports real failures
                pass
            await asyncio.sleep(_TICK)

    task = asyncio.ensure_future(tick())
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


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
    if not in_timeout_range(value):
        raise UsageError(f"timeout must be a number of seconds in {TIMEOUT_RANGE} (got {value!r})", key="timeout")
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
