"""The alerting rules (packaging/prometheus/ollamactl.rules.yml): promtool checks them and runs their unit tests.

The unit tests (tests/prometheus/ollamactl.rules.test.yml) are made by tests/prometheus/rule_tests.py from
ollamactl.metrics' own rendering, so their series are the watchdog's.  promtool comes with Debian's
prometheus package (``make deps`` installs it and disables its server); without it the promtool tests
skip, or fail under OLLAMACTL_E2E_REQUIRED=1 (``make test``, CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from ollamactl.config import Config
from ollamactl.metrics import OUTCOMES, RESTART_OUTCOMES, InstanceMetrics, WatchdogMetrics, render
from ollamactl.watch import Watcher
from tests.prometheus import rule_tests

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging" / "prometheus" / "ollamactl.rules.yml"
TEXT = RULES.read_text()
ALERTS = re.findall(r"^ +- alert: (\w+)$", TEXT, re.M)
EXPRS = re.findall(r"^ +expr: \|\n((?: {10}.*\n)+)", TEXT, re.M)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        why = "promtool is not installed (apt-get install --no-install-recommends prometheus, as make deps does)"
        if os.environ.get("OLLAMACTL_E2E_REQUIRED"):
            pytest.fail(why)
        pytest.skip(why)
    return path


def _run(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_promtool_checks_the_rules(promtool: str):
    out = _run(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(ALERTS)} rules found" in out, out


def test_each_alert_fires_in_its_promtool_test_and_a_healthy_host_fires_none(promtool: str):
    assert "SUCCESS" in _run(promtool, "test", "rules", str(rule_tests.TEST_FILE))


def test_the_promtool_test_file_is_made_from_the_metrics_code():
    assert rule_tests.TEST_FILE.read_text() == rule_tests.render_file(), (
        "tests/prometheus/ollamactl.rules.test.yml is out of date: python3 -m tests.prometheus.rule_tests"
    )


def test_every_alert_is_tested_firing_and_quiet():
    assert len(ALERTS) == len(EXPRS) == 4 and set(ALERTS) == set(rule_tests.ALERTS)
    expects = [e for case in rule_tests.CASES for e in case.expect]
    for alert in ALERTS:
        assert any(e.alert == alert and e.firing for e in expects), f"{alert} never fires in a test"
        assert any(e.alert == alert and not e.firing for e in expects), f"{alert} is never tested quiet"
    healthy = rule_tests.CASES[0]
    assert healthy.name.startswith("a healthy host fires nothing")
    assert {e.alert for e in healthy.expect} == set(ALERTS) and not any(e.firing for e in healthy.expect)


def test_the_rules_use_only_series_and_labels_the_watchdog_writes():
    m = InstanceMetrics("gpu0", "ollama@11434.service", "healthy", 0, 1.0, last_recovery_seconds=1, budget_remaining=3)
    text = render([m], WatchdogMetrics(started_at=0, heartbeat=1))
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels.setdefault(name.split()[0], set()).update(re.findall(r"(\w+)=", rest))
    assert set(re.findall(r"\bollamactl_[a-z_]+", TEXT)) <= set(labels)  # comments included
    outcomes = {"ollamactl_probe_outcome": OUTCOMES, "ollamactl_restarts_total": RESTART_OUTCOMES}
    for expr in EXPRS:
        for name, selector in re.findall(r"(ollamactl_[a-z_]+)\{([^}]*)\}", expr):
            for label, value in re.findall(r'(\w+)=~?"([^"]*)"', selector):
                assert label in labels[name], f"{name} has no label {label}"
                if label == "outcome":
                    assert set(value.split("|")) <= set(outcomes[name]), (name, value)
        for label in re.findall(r"(?:without|by|on|ignoring) \(([^)]*)\)", expr):
            assert all(any(x.strip() in ls for ls in labels.values()) for x in label.split(",")), expr


def test_the_thresholds_follow_from_the_defaults():
    cfg = Config()
    unit = (REPO / "packaging" / "systemd" / "ollamactl-watchdog.service").read_text()
    stop = (REPO / "packaging" / "systemd" / "ollama.service.d" / "ollamactl.conf").read_text()

    def seconds(key: str, text: str) -> float:
        return float(re.search(rf"^{key}=(\d+)s?$", text, re.M).group(1))

    def threshold(pattern: str) -> float:
        return float(re.search(pattern, TEXT).group(1))

    # More than one budget's worth of restarts in an hour; the description says "3 per 10 minutes".
    assert threshold(r"\[1h\]\)\) > (\d+)") == cfg.max_restarts == 3 and cfg.restart_window == 600
    # The heartbeat: stuck after stuck_after, killed by systemd within WatchdogSec, restarted RestartSec later,
    # its first write a period after that; seen up to one scrape and one evaluation (15 s each) later.
    stuck_after = Watcher.stuck_after.fget(SimpleNamespace(cfg=cfg))
    assert stuck_after == 98
    replaced = stuck_after + seconds("WatchdogSec", unit) + seconds("RestartSec", unit) + cfg.watch_period
    assert replaced + 2 * rule_tests.STEP < threshold(r"heartbeat_timestamp_seconds > (\d+)") == 180
    # Unhealthy: longer than two restarts that each run into the restart timeout (with the backoff between),
    # and than the whole budget spent with restarts as long as the stop drop-in lets them be.
    unhealthy = 60 * threshold(r"for: (\d+)m")
    confirm = cfg.deep_confirm + cfg.watch_failure_threshold * cfg.watch_period
    assert 2 * (confirm + cfg.timeout + cfg.watch_startup_grace) + cfg.restart_backoff < unhealthy == 300
    budget = cfg.max_restarts * (confirm + seconds("TimeoutStopSec", stop) + 1 + cfg.watch_startup_grace)
    assert budget + cfg.restart_backoff * (1 + 2) < unhealthy
    # A load is "loading" for up to load_timeout + 15 s (then deep-wedged); the healthy case has one that long.
    healthy = rule_tests.CASES[0]
    longest = max(
        sum(1 for t in range(healthy.until) if o.outcome(t) == "loading") for h in healthy.hosts for o in h.ollamas
    )
    assert longest >= cfg.load_timeout + 15 > unhealthy


def _expand(notation: str) -> list[float | None]:
    """promtool's series notation, read back: '_', '_xn', 'a', 'axn', 'a+bxn', 'a-bxn'."""
    out: list[float | None] = []
    for token in notation.split():
        m = re.fullmatch(r"(_|-?\d+(?:\.\d+)?)(?:([+-]\d+(?:\.\d+)?)?x(\d+))?", token)
        assert m, token
        first, step, n = m.group(1), float(m.group(2) or 0), m.group(3)
        if first == "_":
            out += [None] * int(n or 1)
        else:
            out += [float(first) + step * k for k in range(int(n) + 1 if n else 1)]
    return out


def test_the_sample_notation_reads_back_as_the_samples():
    for case in rule_tests.CASES:
        for series, vs in rule_tests.input_series(case.hosts, case.until).items():
            assert _expand(rule_tests.values(vs)) == vs, series
