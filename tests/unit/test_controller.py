"""The controller: restart refuses a stopped or failed unit and never starts one; probe gives the verdict.

systemd is a fake bus that keeps a unit's state; the runtime directory is real
(root:GROUP 2770, as tmpfiles makes it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from ollamactl import controller as controller_mod
from ollamactl import probe
from ollamactl.config import load_config
from ollamactl.controller import AsyncController
from ollamactl.errors import UnitFailed, UnitStopped
from ollamactl.runtime import RuntimeDir
from ollamactl.systemd import UnitState
from tests.unit.test_runtime_attacks import group, make_rundir

UNIT = "ollama.service"


def state(active: str = "active", result: str = "success", inv: str = "a" * 32, sub: str = "") -> UnitState:
    since = time.time() - 3600
    return UnitState(
        name=UNIT, load_state="loaded", active_state=active, sub_state=sub or {"active": "running"}.get(active, "dead"),
        result=result, main_pid=1, invocation_id=inv, active_enter_timestamp=since, inactive_exit_timestamp=since,
        n_restarts=0, fragment_path=None,
    )  # fmt: skip


class FakeBus:
    """systemd as the restart flow sees it; ``states`` are returned in turn (the last one repeats)."""

    def __init__(self, *states: UnitState) -> None:
        self.states = list(states)
        self.calls: list[str] = []

    async def unit_state(self, name, timeout=None):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    async def subscribe(self):
        pass

    async def restart_unit(self, name, *, start=False):
        self.calls.append("RestartUnit" if start else "TryRestartUnit")
        return "/org/freedesktop/systemd1/job/1"

    async def wait_job(self, job, timeout):
        return "done"

    def close(self):
        pass


@pytest.fixture
def actl(monkeypatch):
    with make_rundir() as path:
        monkeypatch.setattr(controller_mod, "audit", lambda *a, **k: None)
        monkeypatch.setattr(controller_mod, "log", lambda *a, **k: None)
        rd = RuntimeDir(path, group().gr_name)
        cfg = load_config({"runtime_dir": str(rd.path), "group": rd.group}, environ={}, config_file="/dev/null")
        yield AsyncController(config=cfg, plain_results=True)


def test_restart_is_try_restart_by_default(actl):
    actl._bus = FakeBus(state(), state(inv="b" * 32))
    result = asyncio.run(actl.restart("r", wait=False))
    assert result.action == "queued" and actl._bus.calls == ["TryRestartUnit"]


def test_a_stopped_unit_is_refused_with_exit_14_and_how_to_start_it(actl):
    actl._bus = FakeBus(state("inactive", "success"))
    with pytest.raises(UnitStopped) as info:
        asyncio.run(actl.restart("r"))
    err = info.value
    assert err.exit_code == 14 and actl._bus.calls == []
    assert "sudo systemctl start ollama.service" in err.message and "--start" in err.message
    assert "\n" not in err.message and err.to_dict()["error"] == "unit-stopped"


def test_start_starts_a_stopped_unit_with_restart_unit(actl):
    actl._bus = FakeBus(state("inactive", "success"), state(inv="b" * 32))
    assert asyncio.run(actl.restart("r", wait=False, start=True)).action == "queued"
    assert actl._bus.calls == ["RestartUnit"]


@pytest.mark.parametrize(
    ("active", "result"), [("failed", "exit-code"), ("failed", "start-limit-hit"), ("inactive", "signal")]
)
def test_a_failed_unit_is_refused_with_exit_17_result_and_fix(actl, active, result):
    actl._bus = FakeBus(state(active, result))
    with pytest.raises(UnitFailed) as info:
        asyncio.run(actl.restart("r"))
    err = info.value
    assert err.exit_code == 17 and actl._bus.calls == [] and f"Result={result}" in err.message
    assert "sudo systemctl reset-failed ollama.service && sudo systemctl start ollama.service" in err.message
    assert "journalctl -u ollama.service -n 50" in err.message and err.details["result"] == result


def test_a_unit_stopped_between_our_look_and_the_job_stays_stopped(actl):
    """TryRestartUnit is a no-op on a stopped unit; we say so instead of waiting for an API that never comes."""
    actl._bus = FakeBus(state(), state("inactive", "success"))
    with pytest.raises(UnitStopped, match="was stopped before the restart job ran"):
        asyncio.run(actl.restart("r", wait=True))
    assert actl._bus.calls == ["TryRestartUnit"]


# -- probe: the one-shot verdict ---------------------------------------------------------------------------


@pytest.fixture
def probing(monkeypatch):
    """An AsyncController whose HTTP probes and journal are scripted; returns (controller, script)."""
    script = {"live": probe.ProbeResult(probe.HEALTHY, 0.001, api_version="1.0"), "runner": None, "ps": None}

    async def liveness(endpoint, timeout):
        return script["live"]

    async def loaded_models(endpoint, timeout):
        return script["ps"] or probe.PsResult(probe.OK, 0.001, (probe.Loaded("m:latest", 1, 1),))

    async def runner(port, timeout):
        return script["runner"] or probe.RunnerResult(port, probe.OK, probe.OK, 0.001, (probe.Slot(0, False, 0),))

    monkeypatch.setattr(probe, "liveness", liveness)
    monkeypatch.setattr(probe, "loaded_models", loaded_models)
    monkeypatch.setattr(probe, "runner", runner)
    monkeypatch.setattr(controller_mod.sockets, "runner_ports", lambda port: [40001])
    cfg = load_config({"watch_period": 0.01, "deep_confirm": 1.0}, environ={}, config_file="/dev/null")
    ctl = AsyncController(config=cfg, plain_results=True)
    ctl._bus = FakeBus(state())

    class Reader:  # the journal is not readable, as for most users
        from ollamactl.journal import JournalFacts

        facts = JournalFacts(problem="journal not readable by this user")

        async def update(self, inv):
            return self.facts

    ctl._journal = Reader()
    return ctl, script


def test_probe_healthy_in_one_sample_with_evidence(probing):
    ctl, _ = probing
    report = asyncio.run(ctl.probe(deep=True))
    assert (report.outcome, report.exit_code, report.samples) == ("healthy", 0, 1)
    assert "runner :40001 /slots answered" in report.evidence and "loaded: m:latest" in report.evidence


def test_probe_confirms_a_wedge_before_saying_so(probing):
    ctl, script = probing
    script["live"] = probe.ProbeResult(probe.WEDGED, 0.001, "GET /api/version: no answer within 1s")
    report = asyncio.run(ctl.probe())
    assert (report.outcome, report.exit_code, report.samples, report.confirmed) == ("wedged", 11, 3, True)
    assert "3rd time" in report.evidence and report.since is not None


def test_probe_deep_wedged_takes_deep_confirm(probing):
    ctl, script = probing
    script["runner"] = probe.RunnerResult(40001, probe.TIMEOUT, probe.OK, 0.001)
    t0 = time.monotonic()
    report = asyncio.run(ctl.probe(deep=True))
    assert report.outcome == "deep-wedged" and report.exit_code == 12 and report.confirmed
    assert time.monotonic() - t0 >= ctl.config.deep_confirm and "no journal evidence" in report.evidence


def test_probe_of_a_stopped_unit_is_stopped_at_once(probing):
    ctl, _ = probing
    ctl._bus = FakeBus(state("inactive", "success"))
    report = asyncio.run(ctl.probe(deep=True))
    assert (report.outcome, report.exit_code, report.liveness_seconds) == ("stopped", 14, None)


def test_deep_probe_off_is_liveness_only(probing):
    ctl, script = probing
    ctl.config = dataclasses.replace(ctl.config, deep_probe="off")
    script["runner"] = probe.RunnerResult(40001, probe.TIMEOUT, probe.OK, 0.001)
    assert asyncio.run(ctl.probe(deep=True)).outcome == "healthy"


def test_a_configured_model_that_is_not_loaded_is_not_deep_probed(probing):
    ctl, script = probing
    ctl.config = dataclasses.replace(ctl.config, model="llama3")
    script["runner"] = probe.RunnerResult(40001, probe.TIMEOUT, probe.OK, 0.001)
    report = asyncio.run(ctl.probe(deep=True))
    assert report.outcome == "healthy" and "model llama3 is not loaded" in report.evidence


def test_status_has_the_same_fields_plain_and_as_a_model(actl, monkeypatch):
    """The CLI prints the plain result, the Python API returns the model: one set of fields for both."""
    from ollamactl import models

    async def live(endpoint, timeout):
        return probe.ProbeResult(probe.HEALTHY, 0.01, api_version="0.12.3")

    monkeypatch.setattr(probe, "liveness", live)
    actl._bus = FakeBus(state())
    plain = asyncio.run(actl.status())
    fields = getattr(models.Status, "model_fields", None) or models.Status.__fields__
    assert sorted(plain.to_dict()) == sorted(fields)
    assert plain.healthy and plain.api_version == "0.12.3"
