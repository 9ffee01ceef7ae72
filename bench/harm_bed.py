"""The do-no-harm cases (issue 8, part 6): the watchdog as shipped plus a model, driven in a booted container.

Used by bench/bench_watch.py (long runs, these defaults) and by tests/e2e/test_harm.py, which
passes the shorter CI lengths of tests/e2e/harm_cases.py.  It only drives a booted
testbed.Container.  The watchdog runs as shipped (ollamactl-watchdog.service, every key at
its default) with one model configured; Ollama is the stand-in with its scheduler knobs set
by a drop-in for ollama.service.  Load and wedges are driven from inside the container by
tests/e2e/harm_driver.py (with tests/loadgen.py), so requests stay on loopback and timings
are taken next to the unit.

Restarts are counted three ways, all of which must agree for "0 restarts":
the InvocationIDs of ollama.service seen in its journal (systemd's own lines
and the stand-in's) and by sampling, NRestarts (systemd's automatic
restarts), and the watchdog's restart decisions in its journal.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import testbed

REPO = Path(__file__).resolve().parents[1]
UNIT = "ollama.service"
WATCHDOG = "ollamactl-watchdog.service"
MODE_FILE = "/etc/ollama-standin/mode"
CONFIG = "/etc/ollamactl/config.toml"
DROPIN = "/etc/systemd/system/ollama.service.d/harm.conf"
DRIVER = "/root/harm_driver.py"
MODEL = "standin:latest"
OTHER_MODEL = "standin2:latest"
#: The shipped watchdog defaults, plus a model: nothing else is configured.
WATCH_CONFIG = f'model = "{MODEL}"\n'

# -- lengths (the bench's defaults; tests/e2e/harm_cases.py has the shorter CI ones) ---------------------
#: Saturated load: clients at twice the capacity (NUM_PARALLEL x 2) for this long.
SATURATED_SECONDS = 120.0
SATURATED_PARALLEL = 2
SATURATED_TOKEN_SECONDS = 0.05
SATURATED_NUM_PREDICT = 60  # 3 s a request, so half the clients always wait in the FIFO
#: One streamed generation taking the only slot for this long.
STREAM_SECONDS = 180.0
STREAM_TOKEN_SECONDS = 0.5
#: Each model load takes this long (STANDIN_LOAD_SECONDS): the first under queued clients, then a second model.
LOAD_SECONDS = 60.0
LOAD_CLIENTS = 2  # 2 x the default NUM_PARALLEL=1
#: How long an admin's stop is watched.
STOP_SECONDS = 60.0
#: How long the watchdog's deep probes are watched for side effects, with no model loaded and then with one.
QUIET_SECONDS = 8.0
#: Wedges: how long a restart may take to come, the load during them, how long "not detected" is watched.
WEDGE_BOUND = 60.0
WEDGE_CLIENTS = 2  # 2 x the default NUM_PARALLEL=1
WEDGE_NUM_PREDICT = 50  # 0.5 s a request at the default token time: one in flight, one queued, always
UNDETECTED_WINDOW = 15.0

#: The faithful wedges of the stand-in, as the mode written to trigger each (=once: a restart clears it).
WEDGES = {
    "stuck-inference": "stuck-inference=once",
    "silent": "silent=once",
    "stuck-eviction": "stuck-eviction=once",
    "stuck-child": "stuck-child=once",
}
#: Runner wedges done to the real llama-server's process (issue 13); the stand-in's simulated runner has them too.
RUNNER_WEDGES = {
    "stuck-inference": "stuck-inference=once",  # its main thread frozen (ptrace): the #15950 symptom
    "silent-runner": "silent-runner=once",  # the whole runner SIGSTOPped
    "kill-runner": "kill-runner=once",  # the runner SIGKILLed once
}
#: Faults Ollama mends by itself, with how: no restart is wanted, only no harm beyond the fault's own.
SELF_HEALING = {
    "kill-runner": (
        "Ollama's next request for the model finds the runner gone (needsReload's Ping, server/sched.go) and"
        " reloads it on a new port; the requests in flight when it died fail, as they would after any restart"
    ),
}
#: Wedges the verdict has no evidence for, with the reason; they are watched for no restart and no harm instead.
UNDETECTABLE = {
    "stuck-eviction": (
        "a load stuck before it starts (#17408) logs nothing and blocks nothing a probe sees: /api/version,"
        " /api/ps and the loaded model's /slots answer and its requests keep completing; only the request"
        " for the other model hangs"
    ),
}

Report = Callable[[str], object]


@dataclass
class Restarts:
    """What restarted ollama.service since a moment: counted by systemd, the journal and the watchdog."""

    invocations: list[str]  # new InvocationIDs in the unit's journal, oldest first
    nrestarts: int  # systemd's automatic restarts (Restart=always) since then
    decisions: list[str]  # the watchdog's restart decisions (messages)
    verdicts: dict[str, int] = field(default_factory=dict)  # the watchdog's outcomes seen, by name
    evidence: list[str] = field(default_factory=list)  # for each new invocation, the first entry that showed it

    @property
    def count(self) -> int:
        return max(len(self.invocations), self.nrestarts, len(self.decisions))

    def __str__(self) -> str:
        return (
            f"{len(self.invocations)} new invocation(s), NRestarts +{self.nrestarts},"
            f" {len(self.decisions)} watchdog restart decision(s)" + "".join(f"\n  {e}" for e in self.evidence)
        )


OUTCOMES = ("healthy", "busy", "loading", "starting", "stopped", "failed", "down", "wedged", "deep-wedged")
_DECISION = re.compile(r"restart of \S+: (queued|restarted)\b")


def _invocation(e: dict[str, Any]) -> str | None:
    """The InvocationID of ollama.service an entry of ``journalctl -u`` names, if it names one.

    ``-u`` also shows other units' entries about this one: journald's "Suppressed N messages from
    ollama.service" (a busy real runner exceeds the rate limit) carries journald's own
    _SYSTEMD_INVOCATION_ID, with this unit's in OBJECT_SYSTEMD_INVOCATION_ID; PID 1's carry INVOCATION_ID.
    """
    for unit_field, inv_field in (
        ("_SYSTEMD_UNIT", "_SYSTEMD_INVOCATION_ID"),
        ("UNIT", "INVOCATION_ID"),
        ("OBJECT_SYSTEMD_UNIT", "OBJECT_SYSTEMD_INVOCATION_ID"),
    ):
        inv = e.get(inv_field)
        if e.get(unit_field) == UNIT and isinstance(inv, str) and inv:
            return inv
    return None


class HarmBed:
    """One booted container, with the watchdog as shipped and the driver installed."""

    def __init__(
        self,
        c: testbed.Container,
        report: Report = print,
        *,
        model: str = MODEL,
        other_model: str = OTHER_MODEL,
        runner: str = "simulated",
    ) -> None:
        self.c = c
        self.suite = c.suite
        self._report = report
        self._config_orig: str | None = None
        self.grace = 10.0
        self.model = model  # the watchdog's model, warmed before each case
        self.other_model = other_model
        self.runner = runner  # which runner serves the models: "simulated", or "llama-server" (the real engine)
        self.wedge_num_predict = WEDGE_NUM_PREDICT  # tokens per request of the clients during a wedge
        self.saturated_num_predict = SATURATED_NUM_PREDICT

    # -- set-up and tear-down -------------------------------------------------------------------------

    def install(self) -> None:
        """The driver and the load generator in the container; the shipped config remembered."""
        self.c.write_file("/root/loadgen.py", (REPO / "tests/loadgen.py").read_text())
        self.c.write_file(DRIVER, (REPO / "tests/e2e/harm_driver.py").read_text(), mode=0o755)
        r = self.c.run(["systemctl", "cat", WATCHDOG])
        assert r.returncode == 0, f"{WATCHDOG} is not installed: {r.stderr}"
        if self._config_orig is None:
            r = self.c.run(["cat", CONFIG])
            self._config_orig = r.stdout if r.returncode == 0 else ""
        code = "from ollamactl.config import Config\nprint(getattr(Config(), 'watch_startup_grace', 10.0))\n"
        r = self.c.run(["python3", "-c", code])
        if r.returncode == 0:
            self.grace = float(r.stdout.strip())

    def configure(self, env: dict[str, str] | None = None, config: str | None = None) -> float:
        """Ollama (re)started with ``env`` in a drop-in, the watchdog enabled with ``config``; returns when."""
        c = self.c
        config = f'model = "{self.model}"\n' if config is None else config
        if env:
            lines = "".join(f'Environment="{k}={v}"\n' for k, v in env.items())
            c.write_file(DROPIN, "[Service]\n" + lines)
        else:
            c.run(["rm", "-f", DROPIN], check=True)
        c.run(["systemctl", "daemon-reload"], check=True)
        self.set_mode("ok")
        c.run(["systemctl", "reset-failed", UNIT])
        c.run(["systemctl", "restart", UNIT], check=True, timeout=60)
        self.wait_api()
        c.write_file(CONFIG, config)
        c.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)
        since = time.time()
        c.run(["systemctl", "enable", "--now", WATCHDOG], check=True, timeout=60)
        assert self.prop("ActiveState", WATCHDOG) == "active", self.watchdog_log(since - 5)
        return since

    def restore(self) -> None:
        """Watchdog stopped and disabled, drop-in and config gone, mode ok, Ollama restarted, budget fresh."""
        c = self.c
        c.run(["systemctl", "disable", "--now", WATCHDOG], timeout=60)
        c.run(["rm", "-f", DROPIN])
        c.run(["systemctl", "daemon-reload"])
        self.set_mode("ok")
        if self._config_orig:
            c.write_file(CONFIG, self._config_orig)
        else:
            c.run(["rm", "-f", CONFIG])
        c.run(["systemctl", "reset-failed", UNIT])
        c.run(["systemctl", "restart", UNIT], timeout=60)
        c.run(["rm", "-f", "/run/ollamactl/state.json"])
        self.wait_api()

    # -- small helpers ---------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        self.c.write_file(MODE_FILE, mode + "\n")

    def prop(self, name: str, unit: str = UNIT) -> str:
        return self.c.run(["systemctl", "show", "-p", name, "--value", unit], check=True).stdout.strip()

    def driver(self, *args: str, timeout: float) -> dict[str, Any]:
        r = self.c.run(["python3", DRIVER, *args], timeout=timeout)
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise AssertionError(
                f"driver {args[0]} failed (rc={r.returncode}): {r.stdout[-2000:]}{r.stderr[-3000:]}"
            ) from None

    def wait_api(self, timeout: float = 60) -> None:
        code = (
            "import time, urllib.request\n"
            f"end = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    try:\n"
            "        urllib.request.urlopen('http://127.0.0.1:11434/api/version', timeout=1).read(); break\n"
            "    except Exception:\n"
            "        assert time.monotonic() < end, 'ollama.service did not answer'\n"
            "        time.sleep(0.1)\n"
        )
        self.c.run(["python3", "-c", code], timeout=timeout + 10, check=True)

    def warm(self, model: str | None = None, timeout: float = 120) -> None:
        """Load ``model`` (one short generate), so there is something to deep-probe."""
        model = model or self.model
        out = self.driver("generate", "--model", model, "--timeout", str(timeout), timeout=timeout + 10)
        assert out["ok"], out

    def settle(self) -> None:
        """Let the watchdog's startup grace after Ollama's last start pass, plus a probe period."""
        up = self.c.sh(
            f"echo $(cut -d' ' -f1 /proc/uptime) $(systemctl show -p ActiveEnterTimestampMonotonic --value {UNIT})",
            check=True,
        ).stdout.split()
        age = float(up[0]) - int(up[1]) / 1e6
        if age < self.grace + 1.2:
            time.sleep(self.grace + 1.2 - age)

    def report(self, case: str, *values: object) -> None:
        self._report(f"{self.suite:9} harm [{self.runner}] {case}: " + " ".join(str(v) for v in values))

    # -- evidence ------------------------------------------------------------------------------------

    def journal(self, since: float, *matches: str, unit: str | None = None) -> list[dict[str, Any]]:
        argv = ["journalctl", "-o", "json", "--no-pager", f"--since=@{since:.3f}", *matches]
        if unit:
            argv[1:1] = ["-u", unit]
        r = self.c.run(argv, check=True, timeout=60)
        out = []
        for line in r.stdout.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def watchdog_log(self, since: float, lines: int = 60) -> str:
        r = self.c.run(["journalctl", "-u", WATCHDOG, "--no-pager", "-o", "short-precise", f"--since=@{since:.3f}"])
        return "\n".join(r.stdout.splitlines()[-lines:])

    def restarts(self, since: float, before: str, nrestarts_before: str) -> Restarts:
        """Restarts of ollama.service since ``since`` (epoch s); ``before`` is the InvocationID then."""
        seen: list[str] = []
        evidence: list[str] = []
        for e in self.journal(since, unit=UNIT):
            inv = _invocation(e)
            if isinstance(inv, str) and inv and inv != before and inv not in seen:
                seen.append(inv)
                fields = {k: e.get(k) for k in ("_SYSTEMD_UNIT", "_PID", "_COMM", "UNIT", "MESSAGE")}
                evidence.append(f"invocation {inv} (was {before}) seen in {fields}")
        now = self.prop("InvocationID")
        if now != before and now not in seen:
            seen.append(now)
            evidence.append(f"InvocationID is now {now} (was {before})")
        logged, audited, verdicts = [], [], {}
        for e in self.journal(since, unit=WATCHDOG):
            msg = e.get("MESSAGE")
            msg = msg if isinstance(msg, str) else ""
            outcome = e.get("OLLAMACTL_OUTCOME")
            if outcome in OUTCOMES:
                verdicts[outcome] = verdicts.get(outcome, 0) + 1
            reason = e.get("OLLAMACTL_REASON")
            if isinstance(reason, str) and reason.startswith("watch") and outcome in ("queued", "restarted"):
                audited.append(msg)
            elif _DECISION.search(msg):
                logged.append(msg)
        # one decision is both an audit record and a watch log line: count whichever set is larger
        decisions = logged if len(logged) >= len(audited) else audited
        nr = int(self.prop("NRestarts") or 0) - int(nrestarts_before or 0)
        return Restarts(seen, nr, decisions, verdicts, evidence)

    def mark(self) -> tuple[float, str, str]:
        """(now, InvocationID, NRestarts): the baseline restarts() compares with."""
        return time.time(), self.prop("InvocationID"), self.prop("NRestarts")

    # -- the cases -----------------------------------------------------------------------------------

    def hold(self, seconds: float, runs: list[dict[str, Any]], api: bool = False) -> dict[str, Any]:
        """Run loadgen command lines in the container while sampling the unit for ``seconds`` (at least)."""
        args = ["hold", "--seconds", str(seconds)] + (["--api"] if api else [])
        for r in runs:
            args += ["--run", json.dumps(r)]
        longest = max([seconds] + [r.get("delay", 0) + r.get("budget", seconds) for r in runs])
        return self.driver(*args, timeout=longest + 300)


def loadgen_argv(
    clients: int,
    seconds: float,
    num_predict: int,
    model: str = MODEL,
    timeout: float = 300,
    stream: bool = False,
    prompt_chars: int = 0,
) -> list[str]:
    argv = [
        "--url", "http://127.0.0.1:11434", "--clients", str(clients), "--seconds", f"{seconds:g}",
        "--model", model, "--num-predict", str(num_predict), "--timeout", f"{timeout:g}",
    ]  # fmt: skip
    if prompt_chars:
        argv += ["--prompt-chars", str(prompt_chars)]
    return argv + (["--stream"] if stream else [])


@dataclass
class CaseResult:
    """A no-restart case: what ran, what restarted, the figures line."""

    name: str
    restarts: Restarts
    hold: dict[str, Any]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def loads(self) -> list[dict[str, Any]]:
        return [r.get("summary", {}) for r in self.hold["runs"]]

    def failed(self) -> int:
        return sum(int(s.get("failed", 0) or 0) for s in self.loads()) + sum(
            1 for r in self.hold["runs"] if not r.get("summary", {}).get("requests")
        )


def saturated_load(h: HarmBed, seconds: float = SATURATED_SECONDS) -> CaseResult:
    """Clients at 2 x NUM_PARALLEL, each request long enough that half of them always queue."""
    h.configure({"OLLAMA_NUM_PARALLEL": str(SATURATED_PARALLEL), "STANDIN_TOKEN_SECONDS": str(SATURATED_TOKEN_SECONDS)})
    h.warm()
    h.settle()
    since, inv, nr = h.mark()
    t0 = time.monotonic()
    clients = 2 * SATURATED_PARALLEL
    argv = loadgen_argv(clients, seconds, h.saturated_num_predict, model=h.model)
    out = h.hold(seconds, [{"argv": argv, "budget": seconds + 60}])
    return CaseResult("saturated load", h.restarts(since, inv, nr), out, time.monotonic() - t0)


def long_stream(h: HarmBed, seconds: float = STREAM_SECONDS) -> CaseResult:
    """One client streaming one generation that takes ``seconds``: tokens flow, nothing completes."""
    h.configure({"STANDIN_TOKEN_SECONDS": str(STREAM_TOKEN_SECONDS)})
    h.warm()
    h.settle()
    since, inv, nr = h.mark()
    t0 = time.monotonic()
    n = int(round(seconds / STREAM_TOKEN_SECONDS))
    # --seconds 1: exactly one request is sent; it takes the only slot for ``seconds``
    argv = loadgen_argv(1, 1, n, timeout=seconds + 120, stream=True)
    out = h.hold(seconds, [{"argv": argv, "budget": seconds + 120}])
    return CaseResult("one long stream", h.restarts(since, inv, nr), out, time.monotonic() - t0)


def slow_loads(h: HarmBed, load_seconds: float = LOAD_SECONDS) -> CaseResult:
    """Every load takes ``load_seconds``: clients queue behind the first model's load, then a client asks for a
    second model, whose load runs while the first serves the clients.

    The first load is the hard part: requests outstanding, nothing completing, /api/ps blocked for a minute.
    No eviction: with OLLAMA_MAX_LOADED_MODELS=1 the second model would wait for the first to go idle, which
    under load it never does (Ollama's scheduler does the same), so nothing would load at all.
    """
    h.configure({"STANDIN_LOAD_SECONDS": f"{load_seconds:g}"})  # nothing loaded: the clients' first request loads
    h.settle()
    since, inv, nr = h.mark()
    t0 = time.monotonic()
    span = 2 * load_seconds + 2  # the clients outlast both loads
    runs = [
        {"argv": loadgen_argv(LOAD_CLIENTS, span, 20, timeout=span + 120), "budget": span + 120},
        # queued behind the first load (one load at a time), then loaded while standin:latest serves the clients
        {"delay": 5, "argv": loadgen_argv(1, 1, 5, model=OTHER_MODEL, timeout=span + 120), "budget": span + 120},
    ]
    out = h.hold(span, runs)
    result = CaseResult("slow model loads", h.restarts(since, inv, nr), out, time.monotonic() - t0)
    # the watchdog's GET /api/ps during the loads: each blocks on the load (#17376) until it ends
    entries = [e for e in h.journal(since, unit=UNIT) if e.get("_SYSTEMD_INVOCATION_ID") == inv]
    ps = [secs for _, secs, method, path in gin_requests(entries) if (method, path) == ("GET", "/api/ps")]
    slow = [x for x in ps if x >= 2.0]
    result.extra = {"ps_requests": len(ps), "ps_blocked": len(slow), "ps_blocked_max": max(slow, default=0.0)}
    return result


_GIN = re.compile(r'^\[GIN\] [^|]*\|\s*(\d{3}) \|\s*(\S+) \|[^|]*\| (\w+)\s+"([^"]*)"')
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_seconds(text: str) -> float:
    """A Go duration as gin prints it (1.5s, 1m0.5s, 350µs) in seconds; NaN if it is not one."""
    parts = re.findall(r"([\d.]+)(h|ms|m|s|us|µs|ns)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return float("nan")
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def gin_requests(entries: list[dict[str, Any]]) -> list[tuple[int, float, str, str]]:
    """(status, seconds, method, path) of each gin access line among journal ``entries``."""
    out = []
    for e in entries:
        m = _GIN.match(e["MESSAGE"]) if isinstance(e.get("MESSAGE"), str) else None
        if m:
            out.append((int(m.group(1)), go_seconds(m.group(2)), m.group(3), m.group(4)))
    return out


@dataclass
class QuietResult:
    """What the watchdog's probes changed in Ollama: loaded models, keep-alive, requests that need a slot."""

    ps_unloaded: tuple[dict[str, Any], dict[str, Any]]  # /api/ps before/after QUIET_SECONDS, nothing loaded
    ps_loaded: tuple[dict[str, Any], dict[str, Any]]  # the same with a model loaded (by our one generate)
    requests: dict[str, int]  # "METHOD path" -> gin lines, since the watchdog's first probe
    loads: int  # "loading model" lines: loads started
    verdicts: dict[str, int]


def quiet_probes(h: HarmBed, seconds: float = QUIET_SECONDS) -> QuietResult:
    """With a model configured the deep probes run every period: they must never load a model, never
    send a request that takes a slot (generate, chat, embed), and never move a model's expires_at."""
    since = time.time()
    h.configure()  # a fresh process: nothing loaded
    inv = h.prop("InvocationID")  # only its lines count: the journal window may hold the last case's tail
    h.settle()
    ps0 = h.driver("ps", timeout=30)["models"]
    time.sleep(seconds)
    ps1 = h.driver("ps", timeout=30)["models"]
    h.warm()  # the one request of the test: loads the model; its keep-alive starts when it completes
    ps2 = h.driver("ps", timeout=30)["models"]
    time.sleep(seconds)
    ps3 = h.driver("ps", timeout=30)["models"]
    entries = [e for e in h.journal(since, unit=UNIT) if e.get("_SYSTEMD_INVOCATION_ID") == inv]
    requests: dict[str, int] = {}
    for _, _, method, path in gin_requests(entries):
        requests[f"{method} {path}"] = requests.get(f"{method} {path}", 0) + 1
    loads = sum('msg="loading model' in str(e.get("MESSAGE")) for e in entries)
    verdicts = h.restarts(since, h.prop("InvocationID"), h.prop("NRestarts")).verdicts
    return QuietResult((ps0, ps1), (ps2, ps3), requests, loads, verdicts)


@dataclass
class StopResult:
    restarts: Restarts
    hold: dict[str, Any]
    restart_rc: int
    restart_out: str
    probe: dict[str, Any]
    state_after: str
    stopped_logged: bool


def admin_stop(h: HarmBed, seconds: float = STOP_SECONDS) -> StopResult:
    """``systemctl stop ollama`` with the watchdog running: it must stay stopped; ``restart`` refuses."""
    h.configure()
    h.warm()  # a model loaded, as on a box in use; no need to wait out the startup grace: the hold is longer
    since, inv, nr = h.mark()
    h.c.run(["systemctl", "stop", UNIT], check=True, timeout=60)
    out = h.hold(seconds, [])
    r = h.c.run(["ollamactl", "restart", "--json"], user="alice", timeout=120)
    p = h.c.run(["ollamactl", "probe", "--json"], user="alice", timeout=60)
    try:
        probe = json.loads(p.stdout)
    except ValueError:
        probe = {"unparsed": p.stdout, "rc": p.returncode}
    probe["rc"] = p.returncode
    log = h.watchdog_log(since, lines=400)
    stopped_logged = bool(re.search(r"\bstopped\b", log, re.IGNORECASE))
    return StopResult(
        h.restarts(since, inv, nr), out, r.returncode, (r.stdout + r.stderr)[-1500:], probe,
        h.prop("ActiveState"), stopped_logged,
    )  # fmt: skip


@dataclass
class WedgeResult:
    kind: str
    loaded: bool
    out: dict[str, Any]
    restarts: Restarts
    evidence: str  # the watchdog's line that decided the restart, if any

    @property
    def label(self) -> str:
        return f"{self.kind} {'under load' if self.loaded else 'idle'}"


def wedge(h: HarmBed, kind: str, loaded: bool, bound: float = WEDGE_BOUND, forge_as: str = "") -> WedgeResult:
    """Wedge the running stand-in ``kind`` (=once), idle (a model loaded) or under load; measure recovery.

    ``forge_as``: a user who sends an empty generate every 2 s meanwhile (each logs a completed request).
    """
    h.configure()
    h.warm()
    h.settle()
    since, inv, nr = h.mark()
    undetectable = kind in UNDETECTABLE
    undetectable = undetectable or kind in SELF_HEALING
    args = [
        "wedge",
        "--mode",
        {**WEDGES, **RUNNER_WEDGES}[kind],
        "--bound",
        str(UNDETECTED_WINDOW if undetectable else bound),
    ]
    args += ["--model", h.model]
    if loaded:
        args += ["--clients", str(WEDGE_CLIENTS), "--num-predict", str(h.wedge_num_predict)]
    if kind == "stuck-eviction":
        args += ["--trigger-model", h.other_model]
    if forge_as:
        args += ["--forge-as", forge_as]
    out = h.driver(*args, "--warmup", "2", "--after", "1", timeout=bound + 300)
    time.sleep(1.5)  # a second, unwanted restart would show now
    rs = h.restarts(since, inv, nr)
    evidence = ""
    for e in h.journal(since, unit=WATCHDOG):
        msg = e.get("MESSAGE") if isinstance(e.get("MESSAGE"), str) else ""
        if e.get("OLLAMACTL_OUTCOME") in ("wedged", "deep-wedged", "down") or "wedged" in msg:
            evidence = str(e.get("OLLAMACTL_EVIDENCE") or msg)
        if _DECISION.search(msg) and evidence:
            break
    evidence = re.sub(r"^.*?\(reason: watch: ", "", evidence).removesuffix(")")
    evidence = evidence.removeprefix("restarting: ")
    return WedgeResult(kind, loaded, out, rs, evidence[:300])


# -- the real engine (issue 13): Debian unstable's llama-server runs the bed's GGUF models ---------------------

#: The bed's models (tests/standin/make_gguf.py): tiny for wedges and load, big for slow work.
REAL_MODEL = "tiny:latest"
REAL_BIG = "big:latest"
#: Context for the big model's stream: enough for minutes of tokens at its speed on one thread.
REAL_STREAM_CONTEXT = 8192
#: The long prompt: letters, one token each through byte fallback; evaluated in batches of REAL_BATCH, the
#: largest Ollama picks (server/sched.go), so /slots' counters stand still for a whole batch (measured 13.7 s).
REAL_PROMPT_CHARS = 6000
REAL_BATCH = 2048
#: Tokens per request of the clients in the real cases: about half a second each on the tiny model on 2 cores,
#: so the runner is busy and the journal (llama-server logs each task, as Ollama forwards it) is not flooded.
REAL_NUM_PREDICT = 2000


def real_bed(c: testbed.Container, report: Report = print) -> HarmBed:
    """A HarmBed whose watchdog watches the bed's tiny model in the real llama-server."""
    h = HarmBed(c, report, model=REAL_MODEL, other_model=REAL_BIG, runner="llama-server")
    h.wedge_num_predict = h.saturated_num_predict = REAL_NUM_PREDICT
    return h


def real_rate(h: HarmBed, model: str = REAL_BIG, n: int = 500) -> float:
    """Tokens per second the real engine makes for ``model`` here, now, over its first ``n`` (model loaded first)."""
    h.warm(model)
    out = h.driver("generate", "--model", model, "--num-predict", str(n), "--timeout", "300", timeout=320)
    assert out["ok"], out
    return n / max(out["seconds"], 0.001)


def real_stream(h: HarmBed, seconds: float = STREAM_SECONDS) -> CaseResult:
    """One streamed generation on the big model, computing on one thread, sized to take about ``seconds``.

    Each token costs more as the context grows (attention): measured here, 5416 tokens at a first speed of
    50 tokens/s took 353 s, not 108.  So the count is the first tokens' speed x ``seconds`` x 0.4 (about
    ``seconds`` at that growth), capped by the context; the report gives how long it really took.
    """
    h.configure({"OLLAMA_CONTEXT_LENGTH": str(REAL_STREAM_CONTEXT), "STANDIN_LLAMA_THREADS": "1"})
    h.warm()
    rate = real_rate(h)
    n = max(1, min(int(rate * seconds * 0.4), REAL_STREAM_CONTEXT - 64))
    h.settle()
    since, inv, nr = h.mark()
    t0 = time.monotonic()
    argv = loadgen_argv(1, 1, n, model=REAL_BIG, timeout=seconds * 3 + 120, stream=True)
    out = h.hold(seconds, [{"argv": argv, "budget": seconds * 3 + 120}])
    result = CaseResult("one long stream (real engine)", h.restarts(since, inv, nr), out, time.monotonic() - t0)
    result.extra = {"tokens": n, "rate": round(rate, 1)}
    return result


def real_long_prompt(h: HarmBed, chars: int = REAL_PROMPT_CHARS, clients: int = 2) -> CaseResult:
    """A prompt of ``chars`` tokens evaluated in batches of REAL_BATCH on the big model, under load on the same
    runner (NUM_PARALLEL = clients + 1): its counters stand still for each batch while the unit computes."""
    h.configure(
        {
            "OLLAMA_NUM_PARALLEL": str(clients + 1),
            "OLLAMA_CONTEXT_LENGTH": str(chars + 512),
            "STANDIN_LLAMA_BATCH": str(REAL_BATCH),
        },
        config=f'model = "{REAL_BIG}"\n',
    )
    h.warm(REAL_BIG, timeout=300)
    h.settle()
    since, inv, nr = h.mark()
    t0 = time.monotonic()
    span = 20.0
    runs = [
        {"argv": loadgen_argv(clients, span, 8, model=REAL_BIG, timeout=600), "budget": 600},
        {"delay": 2, "argv": loadgen_argv(1, 1, 4, model=REAL_BIG, timeout=600, prompt_chars=chars), "budget": 600},
    ]
    out = h.hold(span, runs)
    return CaseResult("a long prompt under load (real engine)", h.restarts(since, inv, nr), out, time.monotonic() - t0)


def real_model_load(h: HarmBed, seconds: float = 30.0) -> CaseResult:
    """Clients on the small model; a request for the big one loads it meanwhile (a real load, real sizes)."""
    h.configure()
    h.warm()
    h.settle()
    since, inv, nr = h.mark()
    t0 = time.monotonic()
    runs = [
        {"argv": loadgen_argv(LOAD_CLIENTS, seconds, 20, model=h.model, timeout=120), "budget": seconds + 120},
        {"delay": 5, "argv": loadgen_argv(1, 1, 5, model=REAL_BIG, timeout=300), "budget": 300},
    ]
    out = h.hold(seconds, runs)
    return CaseResult("a model load under load (real engine)", h.restarts(since, inv, nr), out, time.monotonic() - t0)
