"""A fake Ollama, systemd and journal: on a virtual clock for the verdict and watch tests (World),
and as in-memory transports for the controller's whole flow (FakeSystemd, FakeOllama).

The world answers what the real ones would for each state Ollama can be in
(see /work/shared/OLLAMA.md): a busy server's /slots answers with n_decoded
rising, a stuck inference loop's /slots never answers while /health and
/api/version do, a loading server's /api/ps blocks and its runner answers 503,
and so on.  Each probe that waits for a timeout advances the sample's clock by
that timeout, so the times the tests report are what the shipped defaults give.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from dbus_next import Message, MessageType, Variant

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
    mode: str = "ok"  # ok, busy, stream, silent, stuck, stalled, loading, refused, stopped, failed
    active_state: str = "active"
    result: str = "success"
    invocation: str = "a" * 32
    started_at: float = T0 - 3600
    models: list[str] = field(default_factory=lambda: [MODEL])
    runners: dict[int, float] = field(default_factory=lambda: {PORT: T0 - 3500})
    completions: list[float] = field(default_factory=list)  # journald times of successful requests
    load_started: float | None = None
    load_activity: float | None = None
    load_begun: float | None = None  # the latest load start the journal shows (open or ended)
    journal_readable: bool = True
    cpus: float = 0.05  # CPUs the unit's processes use
    cpu_ns: int = 0  # their CPU time so far (CPUUsageNSec)
    decoded: int = 0
    probe_timeout: float = 1.0
    deep_timeout: float = 1.0
    restarts: list[float] = field(default_factory=list)
    health_answers: bool = True  # the runner's /health (its HTTP thread)
    cpu_known: bool = True  # does systemd report the unit's CPU time (CPUUsageNSec)?
    task: int = 1  # the busy slot's id_task
    job_id: int | None = None  # the unit's pending job

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
            cpu_usage_nsec=self.cpu_ns + int(self.elapsed * self.cpus * 1e9) if self.cpu_known else None,
            job_id=self.job_id,
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
        busy = self.mode in ("busy", "stream", "stalled")  # stalled: /slots answers, the counters stand still
        if self.mode in ("busy", "stream"):
            self.decoded += 40
        slots = (probe.Slot(0, busy, self.decoded, id_task=self.task),)
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
            load_begun_at=self.load_begun,
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


# -- in-memory transports: the controller's real code runs, only the wire is fake ---------------------------------

MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
OLLAMA_PORT = 11434


class FakeSystemd:
    """PID 1 and the bus daemon as dbus-next's MessageBus shows them; pass it as ``dbus_transport``.

    One unit.  Calling the object opens a connection (a MessageBus-like
    object); every connection's ``call(Message)`` answers as the bus and
    systemd do: GetAll of the unit's properties, GetNameOwner, AddMatch,
    Subscribe, and TryRestartUnit / RestartUnit, which queue a job that runs
    ``job_seconds`` later (a new invocation, started now; TryRestartUnit leaves
    a stopped unit stopped) and ends with JobRemoved from PID 1's unique name.
    ``deny`` maps a member to the D-Bus error name it is answered with;
    ``on_queue`` runs as a restart job is queued (before it runs), and
    ``on_restart`` when a restart job has started the new process.
    """

    OWNER = ":1.1"

    def __init__(self, unit: str = "ollama.service", *, active_state: str = "active", started_ago: float = 3600):
        self.unit = unit
        self.load_state = "loaded"
        self.active_state = active_state
        self.sub_state = "running" if active_state == "active" else "dead"
        self.result = "success"
        self.invocation = "a" * 32
        self.started_at = time.time() - started_ago
        self.deny: dict[str, str] = {}
        self.on_restart: Callable[[FakeSystemd], None] | None = None
        self.on_queue: Callable[[FakeSystemd], None] | None = None  # runs as a restart job is queued
        self.job_seconds = 0.01
        self.stop_seconds = 0.0  # how long a restart job keeps the unit "deactivating" (its stop) before it runs
        self.dead_seconds = 0.0  # then how long it stays "inactive", the job pending, before the start (systemd's
        # restart job turns into a start job once the stop is done: ActiveState=inactive with Job set meanwhile)
        self.job_id = 0  # the pending job's id (Job property), 0 for none
        self.environment: list[str] = []  # Environment=
        self.environment_files: list[tuple[str, bool]] = []  # EnvironmentFile=
        self.missing: set[str] = set()  # units that do not exist (LoadState not-found)
        self.timeout_stop = 10.0  # TimeoutStopSec=
        self.state_changed = self.started_at
        self.calls: list[str] = []  # members called, in order, on every connection
        self.jobs: list[str] = []  # restart jobs queued
        self.connects = 0  # connections opened
        self.open: list[_Connection] = []

    def __call__(self) -> _Connection:
        return _Connection(self)

    def set(self, **props: Any) -> None:
        for key, value in props.items():
            setattr(self, key, value)

    # -- what systemd answers ---------------------------------------------------

    def answer(self, msg: Message) -> list[Any]:
        member, body = msg.member, list(msg.body)
        if member == "GetAll":
            return [self._props(body[0], _unit_of(msg.path))]
        if member == "GetNameOwner":
            return [self.OWNER]
        if member in ("AddMatch", "Subscribe"):
            return []
        if member in ("TryRestartUnit", "RestartUnit"):
            return [self._queue(start=member == "RestartUnit")]
        raise AssertionError(f"FakeSystemd has no answer for {member}")

    def _props(self, iface: str, unit: str | None = None) -> dict[str, Variant]:
        ts = int(self.started_at * 1e6)
        if unit is not None and unit in self.missing:
            if iface != "org.freedesktop.systemd1.Unit":
                return {}
            return {k: Variant("s", v) for k, v in (("Id", unit), ("LoadState", "not-found"), ("ActiveState",
                    "inactive"), ("SubState", "dead"))}  # fmt: skip
        if iface == "org.freedesktop.systemd1.Unit":
            return {
                "Id": Variant("s", self.unit),
                "LoadState": Variant("s", self.load_state),
                "ActiveState": Variant("s", self.active_state),
                "SubState": Variant("s", self.sub_state),
                "InvocationID": Variant("ay", bytes.fromhex(self.invocation)),
                "ActiveEnterTimestamp": Variant("t", ts),
                "InactiveExitTimestamp": Variant("t", ts),
                "FragmentPath": Variant("s", f"/lib/systemd/system/{self.unit}"),
                "StateChangeTimestamp": Variant("t", int(self.state_changed * 1e6)),
                "Job": Variant("(uo)", [self.job_id, f"{MANAGER_PATH}/job/{self.job_id}" if self.job_id else "/"]),
            }
        return {
            "TimeoutStopUSec": Variant("t", int(self.timeout_stop * 1e6)),
            "Result": Variant("s", self.result),
            "MainPID": Variant("u", 4242 if self.active_state == "active" else 0),
            "NRestarts": Variant("u", 0),
            "Environment": Variant("as", list(self.environment)),
            "EnvironmentFiles": Variant("a(sb)", [list(f) for f in self.environment_files]),
        }

    def _queue(self, *, start: bool) -> str:
        self.jobs.append("RestartUnit" if start else "TryRestartUnit")
        job_id = len(self.jobs)
        job = f"{MANAGER_PATH}/job/{job_id}"
        if self.on_queue is not None:
            self.on_queue(self)

        def stopped() -> None:  # the stop part is done; the start part runs dead_seconds later
            self.set(active_state="inactive", sub_state="dead", state_changed=time.time())
            asyncio.get_running_loop().call_later(self.dead_seconds, run)

        def run() -> None:
            self.job_id = 0
            if self.active_state in ("active", "deactivating") or start or self.dead_seconds:
                self.set(active_state="active", sub_state="running", result="success", started_at=time.time())
                self.invocation = f"{job_id:032x}"
                if self.on_restart is not None:
                    self.on_restart(self)
            signal = Message(
                message_type=MessageType.SIGNAL, path=MANAGER_PATH, interface=MANAGER, member="JobRemoved",
                signature="uoss", body=[job_id, job, self.unit, "done"], sender=self.OWNER,
            )  # fmt: skip
            for conn in list(self.open):
                for handler in conn.handlers:
                    handler(signal)

        if self.stop_seconds and self.active_state == "active":
            self.set(active_state="deactivating", sub_state="stop-sigterm", state_changed=time.time())
        self.job_id = job_id
        if self.dead_seconds and self.active_state in ("active", "deactivating"):
            asyncio.get_running_loop().call_later(self.job_seconds + self.stop_seconds, stopped)
        else:
            asyncio.get_running_loop().call_later(self.job_seconds + self.stop_seconds, run)
        return job


def _unit_of(path: str) -> str:
    """The unit name in a unit's object path (systemd escapes bytes as _XX)."""
    name = path.rsplit("/", 1)[-1]
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), name)


class _Connection:
    """One connection to the fake bus: dbus-next's MessageBus as SystemdBus uses it."""

    def __init__(self, systemd: FakeSystemd) -> None:
        self.systemd = systemd
        self.handlers: list[Callable[[Message], Any]] = []

    async def connect(self) -> _Connection:
        self.systemd.connects += 1
        self.systemd.open.append(self)
        return self

    def add_message_handler(self, handler: Callable[[Message], Any]) -> None:
        self.handlers.append(handler)

    def disconnect(self) -> None:
        if self in self.systemd.open:
            self.systemd.open.remove(self)

    async def call(self, msg: Message) -> Any:
        sd = self.systemd
        sd.calls.append(msg.member)
        await asyncio.sleep(0)  # a round trip: other tasks run meanwhile
        if msg.member in sd.deny:
            name = sd.deny[msg.member]
            return SimpleNamespace(message_type=MessageType.ERROR, error_name=name, body=["Access denied"])
        return SimpleNamespace(message_type=MessageType.METHOD_RETURN, error_name=None, body=sd.answer(msg))


class FakeOllama:
    """Ollama's HTTP API as ``probe`` sees it; pass it as ``http_transport``.

    ``mode``: "ok" (answers), "refused" (nothing listens) or "silent"
    (accepts, never answers: the request's deadline ends it).  ``runners``:
    llama-server ports and how their /slots answer ("ok", idle; "busy", a slot
    streaming; or "stuck": never; /health answers either way).  ``load``: how
    the load-only generate answers.  ``requests``: (monotonic time, port, path).
    """

    def __init__(self, mode: str = "ok", *, version: str = "0.12.3") -> None:
        self.mode = mode
        self.version = version
        self.models = ["m:latest"]
        self.runners: dict[int, str] = {}
        self.load = "ok"  # POST /api/generate for a model: "ok" (loads it), "hang" (#17408: never answers)
        self.decoded = 0
        self.requests: list[tuple[float, int, str]] = []
        self.up_since: float | None = time.monotonic() if mode == "ok" else None
        self.port = OLLAMA_PORT  # where it listens

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.up_since = time.monotonic() if mode == "ok" else None

    async def __call__(self, endpoint: probe.Endpoint, method: str, path: str, body: Any) -> probe.Response:
        self.requests.append((time.monotonic(), endpoint.port, path))
        if endpoint.port != self.port:
            return await self._runner(endpoint, path)
        if self.mode == "refused":
            raise probe.HTTPError(f"cannot connect to {endpoint.url}: Connection refused", refused=True)
        if self.mode == "silent":
            await asyncio.Event().wait()  # until the request's deadline
        await asyncio.sleep(0)
        if path == "/api/version":
            return _json(200, {"version": self.version})
        if path == "/api/ps":
            return _json(200, {"models": [{"name": m, "size": 1, "size_vram": 1} for m in self.models]})
        if path == "/api/generate" and isinstance(body, dict) and not body.get("prompt"):  # the load-only request
            model = probe.model_name(str(body.get("model")))
            if model.startswith("missing"):
                return _json(404, {"error": f"model '{model}' not found"})
            if self.load == "hang":
                await asyncio.Event().wait()  # until the request's deadline
            self.models.append(model)
            return _json(200, {"model": model, "response": "", "done": True, "done_reason": "load"})
        return _json(404, {"error": "not found"})

    async def _runner(self, endpoint: probe.Endpoint, path: str) -> probe.Response:
        how = self.runners.get(endpoint.port)
        if how is None:
            raise probe.HTTPError(f"cannot connect to {endpoint.url}: Connection refused", refused=True)
        if path == "/health":
            return _json(200, {"status": "ok"})
        if how == "stuck":
            await asyncio.Event().wait()
        if how == "busy":  # a stream: tokens keep coming
            self.decoded += 5
            return _json(
                200, [{"id": 0, "id_task": 1, "is_processing": True, "next_token": {"n_decoded": self.decoded}}]
            )
        return _json(200, [{"id": 0, "is_processing": False, "next_token": {"n_decoded": 0}}])


def _json(status: int, data: Any) -> probe.Response:
    return probe.Response(status, json.dumps(data).encode())
