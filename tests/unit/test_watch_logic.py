"""The watch loop's decisions, driven by scripted probe reports (no systemd: the controller is ours)."""

import asyncio
import dataclasses
from types import SimpleNamespace

import pytest

from ollamactl import watch
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
        self.unattended = []
        self.budget_left = budget_left
        self.on_restart = None

    async def probe(self, deep=False):
        self.deep_flags.append(deep)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return report(outcome)

    async def restart(self, reason, *, wait=True, observed_at=None, unattended=None):
        self.unattended.append(unattended)
        if isinstance(self.budget_left, Exception):
            err, self.budget_left = self.budget_left, 99
            raise err
        if self.budget_left <= 0:
            raise BudgetExhausted("budget used up", retry_after=300.0)
        self.budget_left -= 1
        self.restarts.append((reason, observed_at, wait))
        if self.on_restart:
            self.on_restart()
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
    w = run(ctl, 5)
    assert len(ctl.restarts) == 1
    reason, observed_at, wait = ctl.restarts[0]
    assert "wedged for 3 probes" in reason and observed_at is not None and wait is False
    assert ctl.unattended == [w.unattended]  # the watchdog's own budget and bounded lock wait


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


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param("probe", id="the probe raises RuntimeError"),
        pytest.param("restart", id="the restart raises TypeError (as a hostile state file once made it)"),
    ],
)
def test_a_tick_that_raises_does_not_stop_the_loop(failure, monkeypatch):
    logged = []
    monkeypatch.setattr(watch, "log", lambda level, message, **fields: logged.append((level, message)))
    if failure == "probe":
        ctl = Scripted([RuntimeError("boom\x1b]0;title\x07"), "wedged", "wedged"], watch_failure_threshold=1)
    else:
        ctl = Scripted(["wedged", "wedged", "wedged"], watch_failure_threshold=1)
        ctl.budget_left = TypeError("'<' not supported between instances of 'str' and 'float'")
    ctl.config = dataclasses.replace(ctl.config, watch_period=0.001)
    sent = []
    w = Watcher(ctl, Notifier(address=""))
    w.notifier.send = lambda **fields: sent.append(fields)
    ctl.on_restart = w.stop.set  # end the loop at the first restart that happens

    asyncio.run(asyncio.wait_for(w.run(), 10))
    assert len(ctl.restarts) == 1 and w.errors == 1
    kind = "RuntimeError" if failure == "probe" else "TypeError"
    errors = [m for level, m in logged if level == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"watch tick failed, still watching: {kind}: ")
    assert "\x1b" not in errors[0] and "\x07" not in errors[0]
    assert {"READY": 1} in sent and {"STATUS": f"tick failed ({kind}); still watching"} in sent


def test_cancellation_still_stops_the_loop():
    ctl = Scripted([])

    async def probe(deep=False):
        raise asyncio.CancelledError

    ctl.probe = probe
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Watcher(ctl, Notifier(address="")).run())


def test_a_notification_that_cannot_be_sent_does_not_raise(tmp_path):
    Notifier(address=str(tmp_path / "no-such-socket")).send(STATUS="x")
