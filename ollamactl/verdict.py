"""The verdict: is Ollama making progress?  Pure logic over samples, no I/O.

One rule decides every restart: restart only on evidence that Ollama makes
no progress, never because it is slow, busy, loading, or stopped by an admin.
A slow answer is not such evidence: on a real Ollama a request waits in an
unbounded FIFO for a slot, and loads take minutes.  What is evidence:

- the whole server silent: GET /api/version (answered by the HTTP server
  alone) gets no answer, again and again, and no request completes meanwhile;
- the inference loop stuck: a runner's GET /slots (llama-server answers it
  only from its main loop) gets no answer for ``deep_confirm`` seconds while
  /api/version answers and a model is loaded, no request completes meanwhile,
  and the unit is not computing on several CPUs (a long prompt batch on a CPU);
- a model load with no sign of life for longer than ``load_timeout`` (plus
  the time Ollama needs to abort a stalled load itself);
- only for the one who waits on it (the guard, ``probe --load``): its own
  request for a model that needs a load, outstanding for ``load_stuck_after``
  with the model not loaded, no load started since, and every loaded runner
  idle (ollama #17408: the scheduler stuck on an eviction; nothing else shows).

"Completes" means a successful inference request in Ollama's access log (the
journal), which gin writes only when a request finishes.  ``Judge`` keeps the
streaks across samples, so the watchdog, ``probe`` and the guard share one
verdict; it reads time only from the samples, so tests inject their clocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ollamactl import probe
from ollamactl.errors import (
    EXIT_BUSY,
    EXIT_DEEP_WEDGED,
    EXIT_FAILED,
    EXIT_LOAD_STUCK,
    EXIT_LOADING,
    EXIT_NOT_ANSWERING,
    EXIT_STARTING,
    EXIT_STOPPED,
    EXIT_WEDGED,
)

if TYPE_CHECKING:
    from ollamactl.journal import JournalFacts

HEALTHY = "healthy"  # answers; idle, or progress seen
BUSY = "busy"  # slow, but with evidence of progress
LOADING = "loading"  # a model load is in progress, within load_timeout
STARTING = "starting"  # the unit is starting or stopping, or within its startup grace
STOPPED = "stopped"  # inactive after a clean stop: an admin's decision, never undone by us
FAILED = "failed"  # the unit failed: an admin must look; never restarted by us
DOWN = "down"  # refused while the unit is active
WEDGED = "wedged"  # /api/version gets no answer
DEEP_WEDGED = "deep-wedged"  # /api/version answers, inference (or a load) makes no progress
LOAD_STUCK = "load-stuck"  # the caller's load never starts while nothing else runs (#17408); only with a LoadWait

OUTCOMES = (HEALTHY, BUSY, LOADING, STARTING, STOPPED, FAILED, DOWN, WEDGED, DEEP_WEDGED, LOAD_STUCK)
EXIT_CODES = {
    HEALTHY: 0,
    DOWN: EXIT_NOT_ANSWERING,
    WEDGED: EXIT_WEDGED,
    DEEP_WEDGED: EXIT_DEEP_WEDGED,
    STARTING: EXIT_STARTING,
    STOPPED: EXIT_STOPPED,
    BUSY: EXIT_BUSY,
    LOADING: EXIT_LOADING,
    FAILED: EXIT_FAILED,
    LOAD_STUCK: EXIT_LOAD_STUCK,
}
#: Outcomes a restart can cure, once confirmed (see Verdict.restart).
RESTARTABLE = frozenset({DOWN, WEDGED, DEEP_WEDGED, LOAD_STUCK})

#: Seconds Ollama gets to abort a stalled load itself (OLLAMA_LOAD_TIMEOUT) before we call the load stuck.
LOAD_GRACE = 15.0
#: A unit computing on more CPUs than this while /slots is silent is busy (a long prompt batch on CPU), not stuck.
CPU_BUSY = 1.5
#: Busy slots whose counters stand still are a long batch while the unit computes on this many CPUs or more
#: (one llama-server thread computing is 1.0; a frozen inference loop measured 0.0).
CPU_IDLE = 0.5
#: ...and they must stand still this long (at least; deep_confirm if longer) before they count: a batch that
#: computes on a GPU may leave the CPUs idle (a backend that waits without spinning), and a 2048-token batch
#: took 13.3 s on 2 CPU cores here.  /slots' own silence is judged at deep_confirm: it never lasted 14 ms.
STALL_CONFIRM = 30.0
#: A flood (journald dropping Ollama's lines) is named in the evidence for this long after journald said so.
FLOOD_SHOWN = 120.0
_TRANSITIONS = ("activating", "deactivating", "reloading", "maintenance", "refreshing")


@dataclass(frozen=True)
class Limits:
    """The verdict's thresholds; ``from_config`` takes them from the settings."""

    threshold: int = 3  # consecutive failing samples before a wedge is confirmed
    deep_confirm: float = 8.0  # seconds a runner's /slots must stay silent
    load_timeout: float = 300.0  # seconds a load may go without a sign of life
    startup_grace: float = 10.0  # seconds after a start in which failures do not count
    load_stuck_after: float = 60.0  # seconds a waiter's load may not start, every runner idle (LoadWait)

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        """The limits in a Config (or anything with the same attributes)."""
        return cls(
            cfg.watch_failure_threshold,
            cfg.deep_confirm,
            cfg.load_timeout,
            cfg.watch_startup_grace,
            getattr(cfg, "load_stuck_after", 60.0),
        )


@dataclass(frozen=True)
class LoadWait:
    """The caller's own request for ``model``, outstanding since ``since`` (epoch s): evidence only it has.

    No read-only probe sees a load that never starts (#17408): loaded models keep answering and nothing is
    logged.  Whoever waits on the load holds the one fact that shows it, and gives it to the verdict.
    """

    model: str
    since: float


@dataclass(frozen=True)
class UnitFacts:
    """What the verdict needs of the unit's state (a systemd.UnitState has these attributes)."""

    name: str
    active_state: str
    sub_state: str = ""
    result: str | None = None
    invocation_id: str | None = None
    started_at: float | None = None
    cpu_usage_nsec: int | None = None
    job_id: int | None = None  # a pending job: a unit that is down with one is being (re)started
    environment: tuple[str, ...] = ()  # not judged: where the unit's Ollama listens (controller._endpoint)
    environment_files: tuple[tuple[str, bool], ...] = ()


@dataclass
class Sample:
    """One round of evidence.  ``at``: wall clock when it began; ``done_at``: when it was complete."""

    at: float
    unit: Any  # UnitFacts or systemd.UnitState
    live: probe.ProbeResult | None = None  # None: not probed (the unit is not active)
    ps: probe.PsResult | None = None  # None: not asked
    runners: tuple[probe.RunnerResult, ...] = ()
    journal: JournalFacts | None = None
    deep: bool = False
    deep_note: str = ""  # why the runners were not probed, if they were not
    done_at: float = 0.0
    ignored: tuple[str, ...] = ()  # ports that answered but are not Ollama's runners, and why (runners.py)
    wait: LoadWait | None = None  # the caller's own request that needs a load, if it has one

    def __post_init__(self) -> None:
        self.done_at = self.done_at or self.at


@dataclass(frozen=True)
class Verdict:
    """An outcome and the one line of evidence that decided it.

    ``confirmed``: for a restartable outcome, its streak is complete (the
    watchdog restarts only then); ``pending``: a streak is under way and
    another sample could confirm or clear it; ``since``: when the streak began.
    """

    outcome: str
    evidence: str
    confirmed: bool = False
    pending: bool = False
    since: float | None = None

    @property
    def restart(self) -> bool:
        """Does this verdict call for a restart?"""
        return self.confirmed and self.outcome in RESTARTABLE

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]


@dataclass
class _Streak:
    start: float
    count: int = 0
    kind: str = "silent"  # what it is a streak of: "silent" /slots (or a stuck load), or "stalled" counters
    cpu: list[tuple[float, int]] = field(default_factory=list)  # (time, unit CPU ns) samples


class Judge:
    """Turns samples into verdicts, keeping the streaks between them (one per watcher or probe)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._invocation: str | None = None
        self._live: _Streak | None = None
        self._deep: _Streak | None = None
        self._proven: set[int] = set()  # runner ports that answered like a llama-server this invocation
        # (port, slot) -> ((is_processing, *Slot.progress) last seen, when that value was first seen)
        self._progress: dict[tuple[int, int], tuple[tuple[Any, ...], float]] = {}
        self._load_seen: float | None = None  # first sign of a load the journal did not date
        self._cpu_seen: list[tuple[float, int]] = []  # (when read, unit CPU ns) of the recent deep samples

    @property
    def failures(self) -> int:
        """Failed samples in a row in the current streak (0 when none runs): the metrics' consecutive failures."""
        return max((s.count for s in (self._live, self._deep) if s is not None), default=0)

    @property
    def deep_pending(self) -> bool:
        """Is a deep streak under way (so the next sample should be deep too)?"""
        return self._deep is not None

    def reset(self) -> None:
        """Forget every streak (after a restart, or when the unit starts or stops)."""
        self._live = self._deep = None
        self._load_seen = None

    def observe(self, s: Sample) -> Verdict:
        """The verdict on one more sample."""
        unit = s.unit
        if unit.invocation_id != self._invocation:
            self._invocation = unit.invocation_id
            self._proven.clear()
            self._progress.clear()
            self._cpu_seen.clear()
            self.reset()
        verdict = self._unit_verdict(unit, s.at)
        if verdict is not None:
            self.reset()
            return verdict
        verdict = self._live_verdict(s) or self._deep_verdict(s)
        if s.wait is not None and verdict.outcome == HEALTHY:
            return _load_stuck(s, s.wait, self.limits) or verdict
        return verdict

    # -- the unit ----------------------------------------------------------------

    def _unit_verdict(self, unit: Any, at: float) -> Verdict | None:
        name, state, result = unit.name, unit.active_state, unit.result
        if state in ("inactive", "failed") and unit.job_id is not None:
            return Verdict(STARTING, f"{name} is {state} with a job pending (a restart between its stop and start?)")
        if state == "failed" or (state == "inactive" and result not in (None, "", "success")):
            return Verdict(
                FAILED,
                f"{name} failed (Result={result or '?'}); restarting would hide why. Fix: sudo systemctl "
                f"reset-failed {name} && sudo systemctl start {name} (see: journalctl -u {name} -n 50)",
            )
        if state == "inactive":
            return Verdict(
                STOPPED,
                f"{name} is stopped (inactive, Result={result or 'success'}): stopped cleanly, e.g. by an admin; "
                f"ollamactl never starts it (to start it: sudo systemctl start {name})",
            )
        if state in _TRANSITIONS or unit.sub_state == "auto-restart" or state != "active":
            return Verdict(STARTING, f"{name} is {state} ({unit.sub_state}): failures do not count yet")
        return None

    def _in_grace(self, s: Sample) -> bool:
        started = s.unit.started_at
        return started is not None and s.at - started < self.limits.startup_grace

    # -- the whole server ------------------------------------------------------------

    def _live_verdict(self, s: Sample) -> Verdict | None:
        live = s.live
        if live is None or live.outcome == probe.HEALTHY:
            self._live = None
            return None
        if self._in_grace(s):
            self.reset()
            age = max(0.0, s.at - s.unit.started_at)
            return Verdict(STARTING, f"{live.detail}, but {s.unit.name} started {age:.1f}s ago (startup grace)")
        streak = self._live = self._live or _Streak(s.at)
        streak.count += 1
        outcome = DOWN if live.outcome == probe.DOWN else WEDGED
        what = live.detail or f"GET /api/version: {live.outcome}"
        if outcome == DOWN:
            what += f" while {s.unit.name} is active"
        progress = _progress(s.journal, streak.start)
        if progress:
            self._live = None
            return Verdict(BUSY, f"{what}, but {progress}")
        span = s.done_at - streak.start
        confirmed = streak.count >= self.limits.threshold and not _stale(s.journal)
        return Verdict(
            outcome,
            f"{what} ({_nth(streak.count)} time in {span:.1f}s){_no_progress(s.journal, streak.start)}"
            + _flood(s.journal, s.done_at),
            confirmed=confirmed,
            pending=not confirmed,
            since=streak.start,
        )

    # -- inference and loads -----------------------------------------------------------

    def _deep_verdict(self, s: Sample) -> Verdict:
        version = f"GET /api/version answered in {s.live.seconds:.3f}s" if s.live else "not probed"
        if s.live and s.live.api_version:
            version += f" (Ollama {s.live.api_version})"
        if not s.deep:  # a liveness-only sample: a deep streak under way is left as it is
            return Verdict(HEALTHY, version)
        lim = self.limits
        journal = s.journal if s.journal is not None and s.journal.readable else None
        for r in s.runners:
            if r.alive:
                self._proven.add(r.port)
            elif r.slots_status == probe.REFUSED:
                self._proven.discard(r.port)  # that runner is gone
        ps = s.ps
        no_model = ps is not None and ps.status == probe.OK and not ps.models
        loaded = ", ".join(m.name for m in ps.models) if ps is not None and ps.models else ""

        # a load in progress: fine until it shows no sign of life for load_timeout
        stuck_load = ""
        load = self._load(s, journal)
        if load is not None:
            began, activity, how = load
            quiet = s.done_at - activity
            if quiet <= lim.load_timeout + LOAD_GRACE:
                self._deep = None
                return Verdict(
                    LOADING,
                    f"a model load is in progress since {_clock(began)} ({s.done_at - began:.0f}s; {how}); {version}"
                    + _flood(journal, s.done_at),
                )
            stuck_load = f"model load since {_clock(began)} shows no sign of life for {quiet:.0f}s ({how})"

        silent = [
            r
            for r in s.runners
            if r.slots_status == probe.TIMEOUT and (r.health_status == probe.OK or r.port in self._proven)
        ]
        before = dict(self._progress)
        stalled = self._stalled(s)
        if s.unit.cpu_usage_nsec is not None:
            self._cpu_seen = [*self._cpu_seen[-63:], (s.at, s.unit.cpu_usage_nsec)]
        if no_model:
            silent, stalled = [], {}  # their models are gone: nothing is stuck on them
        if not silent and not stalled and not stuck_load:
            self._deep = None
            return self._answering(s, version, loaded, no_model, before)
        if self._in_grace(s):
            self.reset()
            age = max(0.0, s.at - s.unit.started_at)
            return Verdict(STARTING, f"{s.unit.name} started {age:.1f}s ago (startup grace)")

        # a stalled runner's streak began when its counters last moved (they were seen flat since then); a
        # streak of one kind never carries over into the other (each has its own start and confirmation)
        kind = "stalled" if stalled and not silent and not stuck_load else "silent"
        if self._deep is None or self._deep.kind != kind:
            self._deep = _Streak(min(stalled.values()) if kind == "stalled" else s.at, kind=kind)
        streak = self._deep
        streak.count += 1
        if s.unit.cpu_usage_nsec is not None:
            streak.cpu.append((s.done_at, s.unit.cpu_usage_nsec))
        span = s.done_at - streak.start
        if stalled and not silent:
            r = next(r for r in s.runners if r.port in stalled)
            busy = [sl for sl in r.slots if sl.is_processing]
            counters = ", ".join(f"slot {sl.id} task {sl.id_task} n_decoded {sl.n_decoded}" for sl in busy[:2])
            what = (
                f"runner :{r.port} /slots answers but its {len(busy)} busy slot(s) made no progress since "
                f"{_clock(stalled[r.port])} ({counters}; {_nth(streak.count)} time in {span:.1f}s), "
                "/api/version answers"
            )
            if loaded:
                what += f", loaded: {loaded}"
        elif silent:
            r = silent[0]
            health = "/health answers" if r.health_status == probe.OK else "/health does not answer either"
            what = (
                f"GET /slots on runner :{r.port} no answer in {r.seconds:.1f}s ({_nth(streak.count)} time in "
                f"{span:.1f}s; {health}), /api/version answers"
            )
            if loaded:
                what += f", loaded: {loaded}"
        else:
            what = f"{stuck_load} ({_nth(streak.count)} time in {span:.1f}s)"
        # No completion line overrides this: an empty generate (a preload, an unload, or a stranger's request
        # every few seconds) completes with 200 without the inference loop, and another model's runner may
        # serve while this one is stuck.  Only the runner's own /slots (counters moving) or CPU time count.
        only_stalled = streak.kind == "stalled"
        if only_stalled:  # flat counters while the unit computes: a long prompt batch (13.3 s measured)
            cpus = self._cpus_since(streak.start, s.done_at)
            if cpus is not None and cpus >= CPU_IDLE:
                self._deep = None  # the next flat sample starts again, from when the counters last moved
                return Verdict(BUSY, f"{what}, but {s.unit.name} is computing ({cpus:.1f} CPUs): a long batch")
            if span < lim.deep_confirm:  # one token of a big model on a CPU can take seconds: not yet a sign
                return Verdict(BUSY, f"{what}: flat for less than {lim.deep_confirm:g}s, one slow token")
        else:
            cpus = self._cpus(streak, s.done_at)
            if cpus is None and len(self._cpu_seen) > 1:  # the streak's first sample: the last period's CPU use
                cpus = self._cpus_since(self._cpu_seen[-2][0], s.done_at)
            if cpus is not None and cpus >= CPU_BUSY:
                return Verdict(BUSY, f"{what}, but {s.unit.name} is computing ({cpus:.1f} CPUs over the silence)")
        needed = max(lim.deep_confirm, STALL_CONFIRM) if only_stalled else lim.deep_confirm if silent else 0.0
        confirmed = streak.count >= lim.threshold and span >= needed and not _stale(s.journal)
        tail = _deep_journal_note(s.journal, streak.start) + _flood(s.journal, s.done_at)
        if only_stalled and cpus is None:
            confirmed = False  # without the unit's CPU time a long prompt batch cannot be ruled out
            tail += f"; {s.unit.name}'s CPU time is unknown, so a long batch cannot be ruled out"
        if not confirmed and (silent or stalled):
            tail += f"; deep-wedged after {lim.threshold} in {needed:g}s"
        tail += "".join(f"; {why}" for why in s.ignored)
        return Verdict(DEEP_WEDGED, what + tail, confirmed=confirmed, pending=not confirmed, since=streak.start)

    def _stalled(self, s: Sample) -> dict[int, float]:
        """Runners that answer /slots with busy slots whose counters did not move: port -> flat since when.

        On llama.cpp's server /slots is answered even while the inference loop is frozen inside a
        decode (tested on Debian's llama-server, build 11669): is_processing stays true and
        n_decoded, n_prompt_tokens_processed and id_task stop.  A long prompt batch stops them too,
        with the unit computing; ``_deep_verdict`` tells the two apart by the unit's CPU time.
        """
        out: dict[int, float] = {}
        ports = {r.port for r in s.runners}
        for key in [k for k in self._progress if k[0] not in ports]:  # runners gone (a reload has a new port)
            del self._progress[key]
        for r in s.runners:
            if r.slots_status != probe.OK:
                if r.slots_status == probe.REFUSED:
                    for key in [k for k in self._progress if k[0] == r.port]:
                        del self._progress[key]
                continue
            busy_since: list[float | None] = []
            for sl in r.slots:
                key = (r.port, sl.id)
                prev = self._progress.get(key)
                seen = (sl.is_processing, *sl.progress)  # idle -> busy is a change, whatever the counters
                if prev is None or prev[0] != seen or sl.id_task is None:
                    self._progress[key] = (seen, s.at)
                    if sl.is_processing:
                        busy_since.append(None)  # moved (or no task id to tell one task from the next)
                elif sl.is_processing:
                    busy_since.append(prev[1])
            if busy_since and None not in busy_since:
                out[r.port] = max(t for t in busy_since if t is not None)
        return out

    def _load(self, s: Sample, journal: JournalFacts | None) -> tuple[float, float, str] | None:
        """(began, last sign of life, how we know) of a load in progress, or None."""
        if journal is not None and journal.load_started_at is not None and not _load_ended(s, journal):
            self._load_seen = None
            began = journal.load_started_at
            return began, max(began, journal.load_activity_at or began), "journal: load started, not finished"
        runner_loading = [r.port for r in s.runners if probe.LOADING in (r.slots_status, r.health_status)]
        ps_blocked = s.ps is not None and s.ps.status == probe.TIMEOUT and journal is None
        if not (runner_loading or ps_blocked):
            self._load_seen = None
            return None
        if self._load_seen is None:
            self._load_seen = s.at
        how = f"runner :{runner_loading[0]} answers 503 loading" if runner_loading else "GET /api/ps blocks"
        return self._load_seen, self._load_seen, how + " (first seen then)"

    def _cpus_since(self, since: float, now: float) -> float | None:
        """CPUs the unit used from ``since`` (a sample's start) to ``now``, from the deep samples (None: unknown)."""
        return _cpu_rate([(t, n) for t, n in self._cpu_seen if since - 0.5 <= t <= now])

    def _cpus(self, streak: _Streak, now: float) -> float | None:
        """CPUs the unit used over the last deep_confirm seconds of the streak (None: unknown)."""
        window = [(t, n) for t, n in streak.cpu if t >= now - self.limits.deep_confirm]
        older = [(t, n) for t, n in streak.cpu if t < now - self.limits.deep_confirm]
        points = older[-1:] + window
        return _cpu_rate(points)

    def _answering(
        self,
        s: Sample,
        version: str,
        loaded: str,
        no_model: bool,
        before: dict[tuple[int, int], tuple[tuple[Any, ...], float]],
    ) -> Verdict:
        if no_model:
            return Verdict(HEALTHY, f"{version}; no model loaded: nothing to deep-probe")
        parts = [version]
        for r in s.runners:
            if r.slots_status != probe.OK:
                if r.slots_status != probe.REFUSED:
                    parts.append(f"runner :{r.port} /slots {r.slots_status} (/health {r.health_status})")
                continue
            busy = [sl for sl in r.slots if sl.is_processing]
            text = f"runner :{r.port} /slots answered in {r.seconds:.3f}s, {len(busy)} of {len(r.slots)} slots busy"
            for sl in busy[:2]:
                prev = before.get((r.port, sl.id))
                was = prev[0][3] if prev is not None and prev[0][1] == sl.id_task else None
                if sl.n_decoded is not None:
                    text += f", slot {sl.id} n_decoded {'' if was is None else f'{was} -> '}{sl.n_decoded}"
            parts.append(text)
        if len(parts) == 1:
            parts.append(s.deep_note or "no runner answered /slots")
        parts.extend(s.ignored)
        outcome = HEALTHY
        if s.ps is not None and s.ps.status == probe.TIMEOUT:
            outcome = BUSY
            parts.append(f"{s.ps.detail} outside a model load")
        elif loaded:
            parts.append(f"loaded: {loaded}")
        return Verdict(outcome, "; ".join(parts) + _flood(s.journal, s.done_at))


def _load_stuck(s: Sample, wait: LoadWait, lim: Limits) -> Verdict | None:
    """LOAD_STUCK if every piece of evidence holds (else None: the healthy verdict stands).

    The caller's request for the model has waited load_stuck_after; the model is not loaded (/api/ps
    answered); no load began since the request (the journal, read; without it, no runner answers "loading");
    and a runner answered /slots, idle, for every loaded model: a load waiting for a busy model to finish
    (Ollama evicts only idle runners) is Ollama working as designed, never this.
    """
    waited = s.done_at - wait.since
    if waited < lim.load_stuck_after or s.ps is None or s.ps.status != probe.OK:
        return None
    name = probe.model_name(wait.model)
    if any(probe.model_name(m.name) == name for m in s.ps.models):
        return None
    journal = s.journal if s.journal is not None and s.journal.readable else None
    if journal is not None:
        if journal.load_begun_at is not None and journal.load_begun_at >= wait.since:
            return None
        how = f"no load started since {_clock(wait.since)} (journal)"
    else:
        how = "no runner loading (the journal is not readable here)"
    if any(probe.LOADING in (r.slots_status, r.health_status) for r in s.runners):
        return None
    busy = [r.port for r in s.runners if r.slots_status == probe.OK and any(sl.is_processing for sl in r.slots)]
    if busy:  # Ollama evicts only idle runners: the load waits for these, as designed
        return Verdict(
            BUSY,
            f"a request for {wait.model} has waited {waited:.0f}s: it is not loaded, and the load waits for"
            f" busy runner(s) :{', :'.join(map(str, busy))} to finish (Ollama evicts only idle ones): not a wedge",
        )
    idle = [r for r in s.runners if r.slots_status == probe.OK]
    if len(idle) != len(s.runners) or len(idle) < len(s.ps.models):
        return None  # a silent or unseen runner: the load may wait for it
    loaded = ", ".join(m.name for m in s.ps.models) or "none"
    return Verdict(
        LOAD_STUCK,
        f"a request for {wait.model} has waited {waited:.0f}s (at least {lim.load_stuck_after:g}s): it is not"
        f" loaded (/api/ps: {loaded}), {how}, and every loaded model's runner is idle, so nothing holds the"
        " load back: Ollama's scheduler is stuck (ollama #17408)",
        confirmed=True,
        since=wait.since,
    )


def _load_ended(s: Sample, journal: JournalFacts) -> bool:
    """Did the load the journal shows open end, with its closing line never read (issue 14 §4)?

    Any local user can flood Ollama's log (404s) over journald's rate limit, which drops lines such as
    "llama-server started in": a missing line must never leave a load open until it looks stuck.  The
    runner started for it answers /health 200 once loaded, and /api/ps lists its model then.
    """
    began = journal.load_started_at or 0.0
    ports = {port for port, at in journal.runners.items() if at >= began}  # started by this load's own line
    if any(r.port in ports and probe.OK in (r.health_status, r.slots_status) for r in s.runners):
        return True
    digests = {journal.runner_models.get(port) for port in ports} - {None}
    listed = {m.digest for m in s.ps.models} if s.ps is not None and s.ps.status == probe.OK else set()
    return bool(digests) and digests <= listed


def _cpu_rate(points: list[tuple[float, int]]) -> float | None:
    """CPUs used between the first and last (time, CPU ns) point; None if two points do not tell."""
    if len(points) < 2 or points[-1][0] <= points[0][0] or points[-1][1] < points[0][1]:
        return None
    return (points[-1][1] - points[0][1]) / 1e9 / (points[-1][0] - points[0][0])


def _progress(journal: JournalFacts | None, since: float) -> str:
    """Why the journal says Ollama made progress since ``since`` ("" if it does not say so)."""
    if journal is not None and journal.readable and journal.completed_since(since):
        at = journal.last_completion_at or since
        return f"a request completed at {_clock(at)} ({journal.last_completion}; journal)"
    return ""


def _flood(journal: JournalFacts | None, now: float) -> str:
    """A flood journald dropped lines of, said in the evidence (a missing line is never taken as evidence)."""
    if journal is None or journal.dropped_at is None or now - journal.dropped_at > FLOOD_SHOWN:
        return ""
    return (
        f"; journald dropped {journal.dropped} of Ollama's lines (rate limit) by {_clock(journal.dropped_at)}:"
        " a flood, so its log may miss lines"
    )


def _no_progress(journal: JournalFacts | None, since: float) -> str:
    if journal is None:
        return ""
    if not journal.readable:
        return f"; no journal evidence ({journal.problem})"
    if _stale(journal):
        return f"; no request completed since {_clock(since)} as far as the journal was read ({journal.problem})"
    return f", no request completed since {_clock(since)} (journal)"


def _deep_journal_note(journal: JournalFacts | None, since: float) -> str:
    """What the journal says during a deep streak: said, never weighed (anyone can make a request complete)."""
    if journal is not None and journal.readable and journal.completed_since(since):
        at = journal.last_completion_at or since
        return (
            f"; a request completed at {_clock(at)} ({journal.last_completion}; journal), which does not show"
            " this runner working (an empty or other model's request completes too)"
        )
    return _no_progress(journal, since)


def _stale(journal: JournalFacts | None) -> bool:
    """Did the last journal read fail (so a completion since may be unseen)?  Then nothing is confirmed."""
    return journal is not None and journal.readable and journal.failed_reads > 0


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
