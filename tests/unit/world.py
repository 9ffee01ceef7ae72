"""A fake Ollama, systemd and journal on a virtual clock, for the verdict and watch tests.

The world answers what the real ones would for each state Ollama can be in
(see /work/shared/OLLAMA.md): a busy server's /slots answers with n_decoded
rising, a stuck inference loop's /slots never answers while /health and
/api/version do, a loading server's /api/ps blocks and its runner answers 503,
and so on.  Each probe that waits for a timeout advances the sample's clock by
that timeout, so the times the tests report are what the shipped defaults give.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ollamactl import probe
from ollamactl.journal import JournalFacts
from ollamactl.verdict import Sample, UnitFacts

T0 = 1_800_000_000.0
PORT = 40001
MODEL = "standin:latest"


@dataclass
class World:
    now: float = T0
    elapsed: float = 0.0  # how long the current sample's probes took (the longest one)
    mode: str = "ok"  # ok, busy, stream, silent, stuck, loading, refused, stopped, failed
    active_state: str = "active"
    result: str = "success"
    invocation: str = "a" * 32
    started_at: float = T0 - 3600
    models: list[str] = field(default_factory=lambda: [MODEL])
    runners: dict[int, float] = field(default_factory=lambda: {PORT: T0 - 3500})
    completions: list[float] = field(default_factory=list)  # journald times of successful requests
    load_started: float | None = None
    load_activity: float | None = None
    journal_readable: bool = True
    cpus: float = 0.05  # CPUs the unit's processes use
    cpu_ns: int = 0  # their CPU time so far (CPUUsageNSec)
    decoded: int = 0
    probe_timeout: float = 1.0
    deep_timeout: float = 1.0
    restarts: list[float] = field(default_factory=list)
    health_answers: bool = True  # the runner's /health (its HTTP thread)

    def clock(self) -> float:
        return self.now + self.elapsed

    def took(self, seconds: float) -> None:
        self.elapsed = max(self.elapsed, seconds)

    # -- systemd ---------------------------------------------------------------

    def unit(self) -> UnitFacts:
        return UnitFacts(
            name="ollama.service",
            active_state=self.active_state,
            sub_state={"active": "running", "inactive": "dead", "failed": "failed"}.get(self.active_state, "start"),
            result=self.result,
            invocation_id=self.invocation if self.active_state == "active" else None,
            started_at=self.started_at,
            cpu_usage_nsec=self.cpu_ns + int(self.elapsed * self.cpus * 1e9),
        )

    def restart(self) -> None:
        """What systemd and a fresh Ollama do: new invocation, no model loaded, no wedge."""
        self.restarts.append(self.clock())
        self.mode, self.invocation = "ok", f"{len(self.restarts):032x}"
        self.started_at = self.clock() + 0.5
        self.models, self.runners, self.load_started, self.cpus = [], {}, None, 0.05

    # -- Ollama's HTTP API -------------------------------------------------------

    def live(self) -> probe.ProbeResult:
        if self.mode == "silent":
            self.took(self.probe_timeout)
            return probe.ProbeResult(probe.WEDGED, self.probe_timeout, "GET /api/version: no answer within 1s")
        if self.mode == "refused":
            return probe.ProbeResult(probe.DOWN, 0.001, "cannot connect to http://127.0.0.1:11434: Connection refused")
        return probe.ProbeResult(probe.HEALTHY, 0.002, api_version="0.12.3")

    def ps(self) -> probe.PsResult:
        if self.mode in ("silent", "loading"):
            self.took(self.deep_timeout)
            return probe.PsResult(probe.TIMEOUT, self.deep_timeout, detail="GET /api/ps: no answer within 1s")
        if self.mode == "refused":
            return probe.PsResult(probe.REFUSED, 0.001)
        return probe.PsResult(probe.OK, 0.002, tuple(probe.Loaded(m, 1, 1) for m in self.models))

    def runner(self, port: int) -> probe.RunnerResult:
        if port not in self.runners or self.mode == "refused":
            return probe.RunnerResult(port, probe.REFUSED, probe.REFUSED, 0.001)
        if self.mode in ("stuck", "silent"):
            self.took(self.deep_timeout)
            health = probe.OK if self.health_answers and self.mode == "stuck" else probe.TIMEOUT
            return probe.RunnerResult(port, probe.TIMEOUT, health, self.deep_timeout)
        if self.mode == "loading" and port == max(self.runners, key=self.runners.__getitem__):
            return probe.RunnerResult(port, probe.LOADING, probe.LOADING, 0.001)
        busy = self.mode in ("busy", "stream")
        if busy:
            self.decoded += 40
        slots = (probe.Slot(0, busy, self.decoded),)
        return probe.RunnerResult(port, probe.OK, probe.OK, 0.003, slots)

    # -- the journal ---------------------------------------------------------------

    def journal(self) -> JournalFacts:
        if not self.journal_readable:
            return JournalFacts(self.invocation, readable=False, problem="journal not readable by this user")
        done = [t for t in self.completions if t <= self.clock()]
        return JournalFacts(
            invocation_id=self.invocation,
            readable=True,
            problem="",
            entries=10,
            last_completion_at=max(done, default=None),
            last_completion='POST "/api/chat" 200 in 2.5s' if done else "",
            load_started_at=self.load_started,
            load_activity_at=self.load_activity,
            runners=dict(self.runners),
        )

    # -- one round, as the controller gathers it ----------------------------------

    def sample(self, deep: bool = True) -> Sample:
        self.elapsed = 0.0
        at, unit = self.now, self.unit()
        if unit.active_state != "active":
            return Sample(at, unit)
        live = self.live()
        ps = self.ps() if deep else None
        runners = tuple(self.runner(p) for p in sorted(self.runners)) if deep else ()
        return Sample(at, unit, live, ps, runners, self.journal(), deep, "", self.clock())

    def advance(self, period: float = 1.0) -> None:
        """The watch loop's pacing: the next sample starts a period after this one, or when it ends."""
        step = max(period, self.elapsed)
        self.now += step
        self.cpu_ns += int(step * self.cpus * 1e9)
        self.elapsed = 0.0
