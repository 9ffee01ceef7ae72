"""The watch loop's decisions, driven by scripted probe reports (no systemd: the controller is ours)."""

import asyncio
from types import SimpleNamespace

import pytest

from ollamactl.config import load_config
from ollamactl.errors import BudgetExhausted
from ollamactl.models import ProbeReport
from ollamactl.watch import Notifier, Watcher


def report(outcome: str) -> ProbeReport:
    code = {"healthy": 0, "down": 10, "wedged": 11, "deep-wedged": 12, "starting": 13}[outcome]
    return ProbeReport(outcome=outcome, healthy=code == 0, exit_code=code, url="http://x:1", liveness_seconds=0.1)


class Scripted:
    """A controller whose probe answers follow a script and whose restarts are recorded."""

    def __init__(self, outcomes, budget_left=99, **settings):
        self.config = load_config(settings, environ={}, config_file="/dev/null")
        self.outcomes = list(outcomes)
        self.deep_flags = []
        self.restarts = []
        self.budget_left = budget_left

    async def probe(self, deep=False):
        self.deep_flags.append(deep)
        return report(self.outcomes.pop(0))

    async def restart(self, reason, *, wait=True, observed_at=None):
        if self.budget_left <= 0:
            raise BudgetExhausted("budget used up", retry_after=300.0)
        self.budget_left -= 1
        self.restarts.append((reason, observed_at, wait))
        return SimpleNamespace(action="queued", unit="ollama.service", job="/j/1")


def run(ctl, ticks, deep=False):
    w = Watcher(ctl, Notifier(address=""))

    async def go():
        for _ in range(ticks):
            await w.tick(deep)

    asyncio.run(go())
    return w


def test_restarts_after_threshold_consecutive_failures_once():
    ctl = Scripted(["healthy", "wedged", "wedged", "wedged", "healthy"])
    run(ctl, 5)
    assert len(ctl.restarts) == 1
    reason, observed_at, wait = ctl.restarts[0]
    assert "wedged for 3 probes" in reason and observed_at is not None and wait is False


def test_a_success_resets_the_count():
    ctl = Scripted(["wedged", "wedged", "healthy", "wedged", "wedged", "healthy"])
    run(ctl, 6)
    assert ctl.restarts == []


def test_starting_does_not_count():
    ctl = Scripted(["down", "starting", "down", "down", "starting", "down"])
    run(ctl, 6)
    assert ctl.restarts == []


def test_deep_failures_survive_liveness_successes_in_between():
    ctl = Scripted(["deep-wedged", "healthy", "deep-wedged", "healthy", "deep-wedged"], watch_failure_threshold=3)
    w = Watcher(ctl, Notifier(address=""))

    async def go():
        for deep in (True, False, True, False, True):
            await w.tick(deep)

    asyncio.run(go())
    assert len(ctl.restarts) == 1 and "deep-wedged" in ctl.restarts[0][0]


def test_budget_exhausted_holds_further_attempts():
    ctl = Scripted(["wedged"] * 9, budget_left=0, watch_failure_threshold=1)
    w = run(ctl, 9)
    assert ctl.restarts == [] and w.hold_until > 0


@pytest.mark.parametrize(("usec", "pid", "interval"), [("30000000", "", 15.0), ("30000000", "1", None), ("", "", None)])
def test_watchdog_interval_from_environment(monkeypatch, usec, pid, interval):
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setenv("WATCHDOG_PID", pid)
    assert Notifier(address="").watchdog_interval == interval
