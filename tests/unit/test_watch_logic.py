"""The watch loop's decisions, end to end through AsyncController.probe and the verdict.

Injected: the bus (unit state), the HTTP probes, the journal and the clock, all
from a simulated Ollama (tests/unit/world.py).  The restart itself is recorded
and applied to the world (the restart flow has its own tests).  Times are
virtual: a scenario of minutes runs in milliseconds, and the restart times
asserted are what the shipped defaults give.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import pytest

from ollamactl import controller as controller_mod
from ollamactl import probe, watch
from ollamactl.config import load_config
from ollamactl.controller import AsyncController
from ollamactl.errors import BudgetExhausted, UnitStopped
from ollamactl.watch import Notifier, Watcher
from tests.unit.world import PORT, World


class FakeBus:
    def __init__(self, world: World) -> None:
        self.world = world

    async def unit_state(self, unit: str, timeout: float | None = None):
        return self.world.unit()

    def close(self) -> None:
        pass


class FakeReader:
    """The journal reader as the controller uses it: facts, and update() for the current invocation."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.facts = world.journal()
        self.updates = 0

    async def update(self, invocation_id):
        self.updates += 1
        self.facts = self.world.journal()
        return self.facts


class Harness:
    """A Watcher over a simulated Ollama; ``run`` advances the virtual clock tick by tick."""

    def __init__(self, monkeypatch, world: World, **settings):
        self.world = world
        self.cfg = load_config(settings, environ={}, config_file="/dev/null")
        self.actl = AsyncController(config=self.cfg)
        self.actl._bus = FakeBus(world)
        self.actl._journal = FakeReader(world)
        clock = SimpleNamespace(time=world.clock, monotonic=world.clock)
        monkeypatch.setattr(controller_mod, "time", clock)
        monkeypatch.setattr(watch, "time", clock)

        async def liveness(endpoint, timeout, transport=None):
            return world.live()

        async def loaded_models(endpoint, timeout, transport=None):
            return world.ps()

        async def runner(port, timeout, transport=None):
            return world.runner(port)

        monkeypatch.setattr(probe, "liveness", liveness)
        monkeypatch.setattr(probe, "loaded_models", loaded_models)
        monkeypatch.setattr(probe, "runner", runner)
        # the kernel's socket list: Ollama (uid 999) on 11434 and its runners on 127.0.0.1
        monkeypatch.setattr(
            controller_mod.sockets,
            "listeners",
            lambda: [("127.0.0.1", 11434, 999), *(("127.0.0.1", p, 999) for p in world.runners)],
        )
        self.logged: list[tuple[str, str]] = []
        monkeypatch.setattr(watch, "log", lambda level, message, **fields: self.logged.append((level, message)))
        self.audits: list[dict] = []  # the records history reads (the restart's own is the controller's)
        monkeypatch.setattr(
            watch, "audit", lambda message, **fields: self.audits.append(dict(message=message, **fields))
        )
        self.calls: list[dict] = []
        self.refuse: Exception | None = None
        self.actl.restart = self._restart
        self.watcher = Watcher(self.actl, Notifier(address=""))

    async def _restart(
        self, reason, *, wait=True, observed_at=None, unattended=None, start=False, verdict=None, evidence=None
    ):
        self.calls.append(dict(at=self.world.clock(), reason=reason, observed_at=observed_at, wait=wait,
                               unattended=unattended, start=start, verdict=verdict, evidence=evidence))  # fmt: skip
        if self.refuse is not None:
            raise self.refuse
        old = self.world.invocation
        self.world.restart()
        return SimpleNamespace(
            action="queued", unit="ollama.service", job="/org/freedesktop/systemd1/job/1", old_invocation_id=old
        )

    def run(self, seconds: float, events=None) -> None:
        w, cfg, watcher = self.world, self.cfg, self.watcher

        async def go():
            end, i = w.now + seconds, 0
            while w.now < end:
                if events is not None:
                    events(w)
                w.elapsed = 0.0
                await watcher.tick(watcher.judge.deep_pending or i % cfg.watch_deep_every == 0)
                w.advance(cfg.watch_period)
                i += 1

        asyncio.run(go())

    def said(self, level: str, text: str) -> list[str]:
        return [m for lv, m in self.logged if lv == level and text in m]


@pytest.fixture
def harness(monkeypatch):
    return lambda world, **settings: Harness(monkeypatch, world, **settings)


# -- never a restart: busy, streaming, loading, stopped, failed ----------------------------------------


def test_saturated_server_no_restart(harness):
    """2x capacity: the slot always busy, a request completing every few seconds, /api/ps slow now and then."""
    h = harness(World(mode="busy"))

    def load(w):
        if int(w.now) % 4 == 0:
            w.completions.append(w.now + 0.5)
        if int(w.now) % 9 == 0:
            w.took(0.9)

    h.run(300, load)
    assert h.calls == [] and h.world.restarts == []


def test_one_three_minute_stream_no_restart(harness):
    h = harness(World(mode="stream"))
    h.run(200)
    assert h.calls == []


def test_a_sixty_second_load_under_load_no_restart(harness):
    w = World(mode="busy")
    h = harness(w)
    began = w.now + 20

    def scenario(w):
        if began <= w.now < began + 60:
            if w.load_started is None:
                w.mode, w.load_started = "loading", w.now
                w.runners[PORT + 1] = w.now
            w.load_activity = w.now if int(w.now) % 20 == 0 else w.load_activity
        elif w.now >= began + 60 and w.load_started is not None:
            w.mode, w.load_started, w.load_activity = "busy", None, None
        if int(w.now) % 5 == 0:
            w.completions.append(w.now + 0.5)

    h.run(150, scenario)
    assert h.calls == []
    assert h.said("INFO", "loading (no restart): a model load is in progress")


def test_stopped_by_an_admin_is_logged_once_and_never_started(harness):
    h = harness(World())
    h.run(10)
    h.world.active_state = "inactive"  # sudo systemctl stop ollama
    h.run(60)
    assert h.calls == []
    (line,) = h.said("WARNING", "stopped")
    assert "waiting, never restarting it" in line and "sudo systemctl start ollama.service" in line


def test_failed_is_logged_with_result_and_fix_and_never_restarted(harness):
    h = harness(World(active_state="failed", result="start-limit-hit"))
    h.run(60)
    assert h.calls == []
    (line,) = h.said("WARNING", "failed")
    assert "Result=start-limit-hit" in line and "sudo systemctl reset-failed ollama.service" in line


def test_a_completion_during_a_liveness_streak_prevents_the_restart(harness):
    h = harness(World(mode="silent"))
    h.run(60, lambda w: w.completions.append(w.now + 0.3))
    assert h.calls == [] and h.said("INFO", "busy (no restart)")


# -- restarts: whole server silent, inference stuck ----------------------------------------------------


def test_whole_server_silent_restarted_within_five_seconds(harness):
    h = harness(World())
    wedge_at = h.world.now + 10.4
    h.run(40, lambda w: setattr(w, "mode", "silent") if w.now >= wedge_at and not w.restarts else None)
    (call,) = h.calls
    assert call["wait"] is False and call["unattended"] is h.watcher.unattended and call["start"] is False
    assert wedge_at <= call["observed_at"] <= wedge_at + 1  # the streak began with the first silent sample
    assert call["reason"].startswith("watch: wedged: GET /api/version")
    # asked within ~4 s; systemd's restart and a fresh Ollama answering take the rest of the 5 s
    assert call["at"] - wedge_at <= 4.0
    assert h.said("WARNING", "restarting: wedged")
    # history's figures: the verdict and its evidence go with the restart, the time to recover after it
    assert call["verdict"] == "wedged" and call["reason"] == f"watch: wedged: {call['evidence']}"
    (back,) = h.audits
    assert back["event"] == "recovered" and back["old_invocation"] == "a" * 32 and back["unit"] == "ollama.service"
    assert back["recovery_seconds"] == h.watcher.metrics.last_recovery_seconds is not None


def test_stuck_inference_restarted_within_fifteen_seconds(harness):
    h = harness(World())
    wedge_at = h.world.now + 30.7
    h.run(60, lambda w: setattr(w, "mode", "stuck") if w.now >= wedge_at and not w.restarts else None)
    (call,) = h.calls
    assert "deep-wedged: GET /slots on runner" in call["reason"] and "no request completed" in call["reason"]
    assert h.cfg.deep_confirm <= call["at"] - wedge_at <= 10.0
    assert len(h.said("WARNING", "deep-wedged, not confirmed yet")) >= 2


def test_after_the_restart_the_new_process_gets_its_grace_and_is_healthy_again(harness):
    h = harness(World(mode="silent"))
    h.run(30)
    assert len(h.calls) == 1 and [a["message"][:13] for a in h.audits] == ["healthy again"]


def test_stuck_inference_with_the_journal_unreadable_uses_the_kernels_socket_list(harness):
    h = harness(World(mode="stuck", journal_readable=False))
    h.run(30)
    assert len(h.calls) == 1 and "no journal evidence" in h.calls[0]["reason"]


# -- the restart path ------------------------------------------------------------------------------------


def test_budget_exhausted_holds_further_attempts(harness):
    h = harness(World(mode="silent"))
    h.refuse = BudgetExhausted("budget used up", retry_after=300.0)
    h.run(60)
    assert len(h.calls) == 1 and h.watcher.hold_until > h.world.now + 200


def test_a_unit_stopped_between_the_verdict_and_the_restart_is_left_alone(harness):
    h = harness(World(mode="silent"))
    h.refuse = UnitStopped("ollama.service is stopped (an admin stopped it?); start it with: ...")
    h.run(10)
    assert h.calls and h.said("WARNING", "not restarting: ollama.service is stopped")


def test_deep_probes_every_kth_period_but_every_period_while_a_streak_runs(harness):
    h = harness(World(), watch_deep_every=5)
    reader = h.actl._journal
    h.run(10)
    assert reader.updates == 2  # deep samples at 0 and 5 s only
    h.world.mode = "stuck"
    h.run(20)
    assert len(h.calls) == 1


# -- the loop survives anything ------------------------------------------------------------------------


class Scripted:
    """A controller whose probe answers follow a script (reports or exceptions); restarts are recorded."""

    def __init__(self, outcomes, **settings):
        self.config = load_config(settings, environ={}, config_file="/dev/null")
        self.outcomes = list(outcomes)
        self.restarts = []
        self.on_restart = None
        self.budget_left = 99

    async def probe(self, deep=False, judge=None):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return SimpleNamespace(outcome=outcome, evidence="scripted", confirmed=True, since=1.0)

    async def restart(self, reason, *, wait=True, observed_at=None, unattended=None, verdict=None, evidence=None):
        if isinstance(self.budget_left, Exception):
            err, self.budget_left = self.budget_left, 99
            raise err
        self.restarts.append(reason)
        if self.on_restart:
            self.on_restart()
        return SimpleNamespace(action="queued", unit="ollama.service", job="/j/1", old_invocation_id=None)


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
        ctl = Scripted([RuntimeError("boom\x1b]0;title\x07"), "wedged", "wedged"])
    else:
        ctl = Scripted(["wedged", "wedged", "wedged"])
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

    async def probe(deep=False, judge=None):
        raise asyncio.CancelledError

    ctl.probe = probe
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Watcher(ctl, Notifier(address="")).run())


def test_a_notification_that_cannot_be_sent_does_not_raise(tmp_path):
    Notifier(address=str(tmp_path / "no-such-socket")).send(STATUS="x")


def test_watch_by_hand_shows_the_current_verdict_on_one_line(harness):
    """The TTY line of `ollamactl watch`: each period the unit's outcome and its evidence; none without a hook."""
    h = harness(World(mode="ok"))
    h.run(3)  # no hook: nothing to call
    lines: list[str] = []
    h.watcher.progress = lines.append
    h.run(2)
    h.world.mode = "silent"
    h.run(2)
    assert lines and lines[0].startswith("watching ollama.service: healthy: ")
    assert lines[-1].startswith("watching ollama.service: wedged: "), lines
