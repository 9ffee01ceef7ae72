"""promtool's unit tests of packaging/prometheus/ollamactl.rules.yml, made from ollamactl's own metrics.

    python3 -m tests.prometheus.rule_tests    # rewrites tests/prometheus/ollamactl.rules.test.yml

Each case is a timeline of hosts: what each watchdog knows at every scrape (15 s, as in Debian's
prometheus.yml), rendered by ``ollamactl.metrics.render`` as the watchdog writes its file (its
budget counted by ``ollamactl.budget.Budget``), then labelled as Prometheus stores a scrape of
node_exporter: the target's ``instance`` and ``job`` added, the watchdog's own ``instance``
renamed ``exported_instance`` (honor_labels: false, the default).  So the names and labels in
the tests come from the code that writes them.  tests/unit/test_alert_rules.py checks that the
file is this module's output and runs ``promtool test rules`` on it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ollamactl.budget import Budget
from ollamactl.metrics import InstanceMetrics, WatchdogMetrics, render

HERE = Path(__file__).resolve().parent
TEST_FILE = HERE / "ollamactl.rules.test.yml"
RULES = "../../packaging/prometheus/ollamactl.rules.yml"  # promtool resolves it from the test file's directory
STEP = 15  # seconds between scrapes (Debian's prometheus.yml)
#: Seconds between rule evaluations: Debian's are 15 s apart too, but not in step with the scrapes; evaluating
#: in between as well makes increase() extrapolate to the edges of its range as it does there.
EVAL_STEP = 5
JOB = "node"  # Debian's prometheus.yml scrapes node_exporter as job "node"
#: What the alerts should say, as the rules' templates render them for these labels (and $value).
SEVERITY = {
    "OllamactlOllamaRestartedOften": "warning",
    "OllamactlRestartBudgetExhausted": "warning",
    "OllamactlWatchdogHeartbeatStale": "critical",
    "OllamactlInstanceUnhealthy": "critical",
}
ALERTS = tuple(SEVERITY)
SERVING = ("healthy", "busy", "loading")
RESTARTABLE = ("down", "wedged", "deep-wedged")


def annotations(alert: str, labels: dict[str, str], value: float) -> dict[str, str]:
    """The summary and description the rule's templates make of these labels and value."""
    unit, host = labels.get("unit"), labels["instance"]
    if alert == "OllamactlOllamaRestartedOften":
        return {
            "summary": "Ollama keeps wedging; the ollamactl watchdog restarted it more than 3 times in an hour.",
            "description": f"The ollamactl watchdog restarted {unit} on {host} {value:g} times in the last hour, "
            "more than one restart budget (max_restarts, 3). Each restart means a wedge that users' requests "
            "waited on; the watchdog's log (journalctl -u ollamactl-watchdog) names the evidence for each.",
        }
    if alert == "OllamactlRestartBudgetExhausted":
        return {
            "summary": "The ollamactl watchdog has no restart of Ollama left in its budget.",
            "description": f"The ollamactl watchdog used its whole restart budget for {unit} on {host} "
            "(max_restarts restarts per restart_window; 3 per 10 minutes by default). If Ollama wedges again "
            "now, it stays wedged until the window frees a restart. Restarts this close together mean the "
            f"restarts do not cure the wedge: see journalctl -u ollamactl-watchdog and -u {unit}.",
        }
    if alert == "OllamactlWatchdogHeartbeatStale":
        return {
            "summary": "The ollamactl watchdog is stuck or not running; a wedged Ollama would not be restarted.",
            "description": f"The ollamactl watchdog on {host} last finished probing {_humanize_duration(value)} "
            "ago. It is either stopped (ollamactl_watchdog_up is 0 after a clean stop) or stuck, and systemd's "
            "watchdog (WatchdogSec=30) has not replaced it. Meanwhile nothing restarts a wedged Ollama on this "
            "host: systemctl status ollamactl-watchdog.",
        }
    if alert == "OllamactlInstanceUnhealthy":
        return {
            "summary": "Ollama has not been serving for 5 minutes, longer than the ollamactl watchdog needs to "
            "restart it.",
            "description": f"{unit} on {host} has been down, wedged, deep-wedged, failed or starting for more "
            "than 5 minutes, longer than the ollamactl watchdog's restarts take. Either the watchdog cannot "
            "restart it (budget exhausted, restart refused or failing, the watchdog stuck or stopped) or the "
            f"unit failed, which it never restarts. ollamactl probe --deep -v --unit {unit} names the evidence.",
        }
    raise KeyError(alert)


def _humanize_duration(v: float) -> str:
    """Prometheus' humanizeDuration template function, for the durations these tests produce (>= 1 s)."""
    s, m, h, d = int(v) % 60, int(v) // 60 % 60, int(v) // 3600 % 24, int(v) // 86400
    if d:
        return f"{d}d {h}h {m}m {s}s"
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{v:.4g}s"


# --- the timelines -----------------------------------------------------------------------------


@dataclass
class Ollama:
    """One instance the watchdog watches: its outcome at each time, and when the watchdog restarted it."""

    name: str
    unit: str
    outcome: Callable[[int], str]
    restarts: Sequence[int] = ()  # seconds at which a restart of the watchdog's was queued
    failed: Sequence[int] = ()  # seconds at which a restart it asked for failed (say, polkit said no)


@dataclass
class Run:
    """One run of the watchdog process (counters and budget history start anew with each)."""

    start: int
    stuck_at: int | None = None  # its loops stop finishing ticks (the writer goes on: heartbeat frozen, up 1)
    stopped_at: int | None = None  # a clean stop: one last write with up 0; the file stays


@dataclass
class Host:
    """One machine: node_exporter's scrape target, its watchdog's runs, and its Ollama instances."""

    target: str
    ollamas: Sequence[Ollama]
    runs: Sequence[Run] = (Run(0),)


def timeline(*spans: tuple[int, str], then: str = "healthy") -> Callable[[int], str]:
    """An outcome function from (until_seconds, outcome) spans, in order; ``then`` afterwards."""

    def outcome(t: int) -> str:
        return next((o for until, o in spans if t < until), then)

    return outcome


def _write(host: Host, t: int) -> str | None:
    """The text of the host's ollamactl.prom as a scrape at time ``t`` finds it (None: no file yet)."""
    runs = [r for r in host.runs if r.start <= t]
    if not runs:
        return None
    run = runs[-1]
    up = True
    if run.stopped_at is not None and t >= run.stopped_at:
        t, up = run.stopped_at, False  # the last write, left in place
    frozen = run.stuck_at if run.stuck_at is not None and t >= run.stuck_at else None
    seen = frozen if frozen is not None else t  # what the loops last finished
    instances = []
    for o in host.ollamas:
        history = [r for r in o.restarts if run.start <= r <= seen]
        m = InstanceMetrics(o.name, o.unit, o.outcome(seen), probed_at=float(seen))
        # The failure streak is not used by the rules; a plausible figure, so the series is there.
        m.failures = 3 if m.outcome in RESTARTABLE else 0
        m.restarts["queued"] = len(history)
        m.restarts["failed"] = sum(1 for r in o.failed if run.start <= r <= seen)
        m.budget_remaining = Budget().remaining(history, seen)
        if history:  # from the last restart until the first healthy probe after it
            healed = next((u for u in range(history[-1] + STEP, seen + 1, STEP) if o.outcome(u) == "healthy"), None)
            m.last_recovery_seconds = None if healed is None else float(healed - history[-1])
        instances.append(m)
    return render(instances, WatchdogMetrics(started_at=float(run.start), heartbeat=float(seen), up=up))


_SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


def scrape(text: str, target: str) -> dict[str, float]:
    """{series: value} as Prometheus stores a node_exporter scrape of ``text`` (our label values need no escapes)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels = dict(_LABEL.findall(m.group(2) or ""))
        if "instance" in labels:
            labels["exported_instance"] = labels.pop("instance")
        labels.update(instance=target, job=JOB)
        out[series_name(m.group(1), labels)] = float(m.group(3))
    return out


def series_name(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def input_series(hosts: Sequence[Host], until: int) -> dict[str, list[float | None]]:
    """Every series the hosts' files give, with its value at each scrape from 0 to ``until`` (None: absent)."""
    steps = range(0, until + 1, STEP)
    series: dict[str, list[float | None]] = {}
    for i, t in enumerate(steps):
        for host in hosts:
            text = _write(host, t)
            for name, value in (scrape(text, host.target) if text else {}).items():
                series.setdefault(name, [None] * len(steps))[i] = value
    return series


def values(vs: Sequence[float | None]) -> str:
    """promtool's notation for samples: 'axn' for a run of n+1 equal ones, 'a+bxn' for a steady rise, '_xn' for
    n absent ones."""
    out, i = [], 0
    while i < len(vs):
        j = i + 1
        while j < len(vs) and vs[j] is None and vs[i] is None:
            j += 1
        if vs[i] is None:
            out.append("_" if j == i + 1 else f"_x{j - i}")
            i = j
            continue
        step = vs[j] - vs[i] if j < len(vs) and vs[j] is not None else 0
        while j < len(vs) and vs[j] is not None and vs[j] - vs[j - 1] == step:
            j += 1
        if step and j - i < 3:  # two values are just two values
            j = i + 1
        a, n = _num(vs[i]), j - i - 1
        if n == 0:
            out.append(a)
        elif step == 0:
            out.append(f"{a}x{n}")
        else:
            out.append(f"{a}{'-' if step < 0 else '+'}{_num(abs(step))}x{n}")
        i = j
    return " ".join(out)


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


# --- the cases ---------------------------------------------------------------------------------


@dataclass
class Expect:
    """At ``at`` seconds, ``alert`` is firing exactly for these label sets (each the series' labels)."""

    at: int
    alert: str
    firing: Sequence[dict[str, str]] = ()
    values: Sequence[float] = ()  # the alert's $value for each, where the annotations show it


@dataclass
class Case:
    name: str
    hosts: Sequence[Host]
    until: int
    expect: Sequence[Expect] = field(default_factory=list)


def who(host: str, instance: str, unit: str, **extra: str) -> dict[str, str]:
    """The labels an instance's series carry in Prometheus."""
    return {"instance": host, "job": JOB, "exported_instance": instance, "unit": unit, **extra}


def _wedges(restarts: Sequence[int], cured_at: int, since: int, how: str = "wedged") -> Callable[[int], str]:
    """Wedged from ``since``; each restart shows "starting" for one scrape, then wedged again, until ``cured_at``."""
    spans = [(since, "healthy")]
    for r in restarts:
        if r >= cured_at:
            break
        spans += [(r, how), (r + STEP, "starting")]
    spans.append((cured_at, how))
    return timeline(*spans)


M = 60
CASES = [
    Case(
        "a healthy host fires nothing: serving, busy, a load as long as it may take, an admin's stop, one cured wedge",
        [
            Host(
                "ollama-1:9100",
                [
                    Ollama(
                        "gpu0",
                        "ollama@11434.service",
                        timeline((60 * M, "healthy"), (60 * M + 15, "wedged"), (60 * M + 30, "starting")),
                        restarts=[60 * M + 15],
                    ),
                    # loading for load_timeout + 15 s (315 s), the longest that is still no wedge
                    Ollama("gpu1", "ollama@11435.service", timeline((30 * M, "busy"), (35 * M + 15, "loading"))),
                    Ollama("gpu2", "ollama@11436.service", timeline((10 * M, "healthy"), then="stopped")),
                ],
            )
        ],
        until=120 * M,
        expect=[Expect(t, a) for t in (5 * M, 30 * M, 35 * M + 10, 62 * M, 90 * M, 120 * M) for a in ALERTS],
    ),
    Case(
        "more than 3 restarts in an hour, across a restart of the watchdog (the counter starts again at 0); 3 do "
        "not fire, nor do failed restarts",
        [
            Host(
                "ollama-1:9100",
                [
                    Ollama("gpu0", "ollama@11434.service", timeline(), restarts=[5 * M, 20 * M, 35 * M, 50 * M]),
                    Ollama("gpu1", "ollama@11435.service", timeline(), restarts=[10 * M, 25 * M, 45 * M]),
                    Ollama("gpu2", "ollama@11436.service", timeline(), restarts=[60 * M, 75 * M, 90 * M]),
                    # wedged for 5 minutes while every restart the watchdog asks for fails (polkit says no)
                    Ollama(
                        "gpu3",
                        "ollama@11437.service",
                        timeline((40 * M, "healthy"), (45 * M, "wedged")),
                        failed=range(40 * M + 15, 45 * M, STEP),
                    ),
                ],
                runs=[Run(0), Run(30 * M)],
            )
        ],
        until=120 * M,
        expect=[
            Expect(40 * M, "OllamactlOllamaRestartedOften"),  # 3 so far: not more than 3
            Expect(
                55 * M,
                "OllamactlOllamaRestartedOften",
                [who("ollama-1:9100", "gpu0", "ollama@11434.service", outcome="queued")],
                [4],
            ),
            # gpu2's 3 in the hour, which increase() extrapolates to 3.004 between scrapes
            Expect(100 * M + 5, "OllamactlOllamaRestartedOften"),
            Expect(115 * M, "OllamactlOllamaRestartedOften"),  # gpu0's 4 more than an hour ago
        ],
    ),
    Case(
        "3 restarts within 10 minutes use up the budget until the first leaves the window",
        [
            Host(
                "ollama-1:9100",
                [
                    # wedged at 10 min; restarts 30 s and 45 s apart (backoff 10 s, 20 s); the third cures it
                    Ollama(
                        "gpu0",
                        "ollama@11434.service",
                        _wedges([615, 645, 690], cured_at=705, since=600),
                        restarts=[615, 645, 690],
                    ),
                    Ollama("gpu1", "ollama@11435.service", timeline()),
                ],
            )
        ],
        until=30 * M,
        expect=[
            Expect(11 * M, "OllamactlRestartBudgetExhausted"),  # 2 restarts: 1 left
            Expect(12 * M, "OllamactlRestartBudgetExhausted", [who("ollama-1:9100", "gpu0", "ollama@11434.service")]),
            Expect(20 * M, "OllamactlRestartBudgetExhausted", [who("ollama-1:9100", "gpu0", "ollama@11434.service")]),
            Expect(21 * M, "OllamactlRestartBudgetExhausted"),  # the restart at 10m15s left the window
            Expect(21 * M, "OllamactlInstanceUnhealthy"),  # cured after 1m45s
        ],
    ),
    Case(
        "a stuck watchdog and a stopped one fire; one that systemd replaced in time does not",
        [
            Host("stuck:9100", [Ollama("ollama", "ollama.service", timeline())], runs=[Run(0, stuck_at=10 * M)]),
            Host("stopped:9100", [Ollama("ollama", "ollama.service", timeline())], runs=[Run(0, stopped_at=10 * M)]),
            # stuck at 10 min: its pings stop at 98 s, systemd kills it within 30 s and restarts it after 5 s
            Host(
                "replaced:9100",
                [Ollama("ollama", "ollama.service", timeline())],
                runs=[Run(0, stuck_at=10 * M), Run(10 * M + 135)],
            ),
        ],
        until=30 * M,
        expect=[
            Expect(12 * M + 15, "OllamactlWatchdogHeartbeatStale"),  # 135 s: as long as systemd may take
            Expect(
                13 * M + 30,
                "OllamactlWatchdogHeartbeatStale",
                [{"instance": "stopped:9100", "job": JOB}, {"instance": "stuck:9100", "job": JOB}],
                [210, 210],
            ),
            Expect(30 * M, "OllamactlInstanceUnhealthy"),
        ],
    ),
    Case(
        "unhealthy for 5 minutes: restarts that do not cure a wedge or a deep wedge (then the budget), a failed "
        "unit, down while every restart fails",
        [
            Host(
                "ollama-1:9100",
                [
                    # wedged at 10 min; 3 restarts that do not help, then the budget holds the 4th until 20m15s
                    Ollama(
                        "gpu0",
                        "ollama@11434.service",
                        _wedges([615, 645, 690, 1215], cured_at=1230, since=600),
                        restarts=[615, 645, 690, 1215],
                    ),
                    Ollama("gpu1", "ollama@11435.service", timeline((5 * M, "healthy"), then="failed")),
                    # deep-wedged at 30 min, cured by one restart
                    Ollama(
                        "gpu2",
                        "ollama@11436.service",
                        timeline((30 * M, "healthy"), (30 * M + 15, "deep-wedged"), (30 * M + 45, "starting")),
                        restarts=[30 * M + 15],
                    ),
                    # refusing connections from 20 min while every restart the watchdog asks for fails; fixed at 27
                    Ollama(
                        "gpu3",
                        "ollama@11437.service",
                        timeline((20 * M, "healthy"), (27 * M, "down")),
                        failed=range(20 * M + 15, 27 * M, STEP),
                    ),
                    # deep-wedged at 22 min; as gpu0, cured by the restart the budget allows at 32m15s
                    Ollama(
                        "gpu4",
                        "ollama@11438.service",
                        _wedges([1335, 1365, 1410, 1935], cured_at=1950, since=1320, how="deep-wedged"),
                        restarts=[1335, 1365, 1410, 1935],
                    ),
                ],
            )
        ],
        until=40 * M,
        expect=[
            Expect(9 * M + 30, "OllamactlInstanceUnhealthy"),
            Expect(10 * M + 30, "OllamactlInstanceUnhealthy", [who("ollama-1:9100", "gpu1", "ollama@11435.service")]),
            Expect(14 * M + 30, "OllamactlInstanceUnhealthy", [who("ollama-1:9100", "gpu1", "ollama@11435.service")]),
            Expect(
                15 * M + 30,
                "OllamactlInstanceUnhealthy",
                [
                    who("ollama-1:9100", "gpu0", "ollama@11434.service"),
                    who("ollama-1:9100", "gpu1", "ollama@11435.service"),
                ],
            ),
            Expect(
                21 * M,
                "OllamactlInstanceUnhealthy",
                [who("ollama-1:9100", "gpu1", "ollama@11435.service")],
            ),
            Expect(
                26 * M,
                "OllamactlInstanceUnhealthy",
                [
                    who("ollama-1:9100", "gpu1", "ollama@11435.service"),
                    who("ollama-1:9100", "gpu3", "ollama@11437.service"),
                ],
            ),
            Expect(
                28 * M,
                "OllamactlInstanceUnhealthy",
                [
                    who("ollama-1:9100", "gpu1", "ollama@11435.service"),
                    who("ollama-1:9100", "gpu4", "ollama@11438.service"),
                ],
            ),
            Expect(35 * M, "OllamactlInstanceUnhealthy", [who("ollama-1:9100", "gpu1", "ollama@11435.service")]),
        ],
    ),
]


# --- the file ----------------------------------------------------------------------------------


def _q(s: str) -> str:
    """A YAML single-quoted scalar."""
    return "'" + s.replace("'", "''") + "'"


def _duration(seconds: int) -> str:
    m, s = divmod(seconds, 60)
    return (f"{m}m" if m else "") + (f"{s}s" if s or not m else "")


def render_file(cases: Sequence[Case] = CASES) -> str:
    """The promtool test file for these cases."""
    out = [
        "# Generated by tests/prometheus/rule_tests.py from ollamactl.metrics.render(): do not edit; rewrite it with",
        "#   python3 -m tests.prometheus.rule_tests",
        "# and run it with",
        "#   promtool test rules tests/prometheus/ollamactl.rules.test.yml",
        "rule_files:",
        f"  - {RULES}",
        f"evaluation_interval: {EVAL_STEP}s",
        "tests:",
    ]
    for case in cases:
        out += [f"  # {case.name}", f"  - interval: {STEP}s", "    input_series:"]
        for name, vs in sorted(input_series(case.hosts, case.until).items()):
            out += [f"      - series: {_q(name)}", f"        values: {_q(values(vs))}"]
        out.append("    alert_rule_test:")
        for e in case.expect:
            out += [f"      - eval_time: {_duration(e.at)}", f"        alertname: {e.alert}"]
            if not e.firing:
                out.append("        exp_alerts: []")
                continue
            out.append("        exp_alerts:")
            for labels, value in zip(e.firing, e.values or [0.0] * len(e.firing), strict=True):
                out.append("          - exp_labels:")
                out += [
                    f"              {k}: {_q(v)}" for k, v in sorted({**labels, "severity": SEVERITY[e.alert]}.items())
                ]
                out.append("            exp_annotations:")
                out += [f"              {k}: {_q(v)}" for k, v in annotations(e.alert, labels, value).items()]
    return "\n".join(out) + "\n"


def main() -> int:
    TEST_FILE.write_text(render_file())
    print(f"wrote {TEST_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
