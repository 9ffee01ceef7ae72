"""The controller: restart refuses a stopped or failed unit and never starts one; probe gives the verdict.

systemd and Ollama are in-memory transports (world.FakeSystemd over the
D-Bus seam, world.FakeOllama over the HTTP one), so SystemdBus and probe run
for real; the runtime directory is real (root:GROUP 2770, as tmpfiles makes it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from ollamactl import controller as controller_mod
from ollamactl import late as late_mod
from ollamactl.config import load_config
from ollamactl.controller import AsyncController
from ollamactl.errors import UnitFailed, UnitStopped, UsageError
from ollamactl.models import Status, fields_doc
from ollamactl.runtime import RuntimeDir
from tests.unit.test_runtime_attacks import group, make_rundir
from tests.unit.world import FakeOllama, FakeSystemd

UNIT = "ollama.service"


@pytest.fixture
def systemd() -> FakeSystemd:
    return FakeSystemd(UNIT)


@pytest.fixture
def ollama() -> FakeOllama:
    return FakeOllama()


@pytest.fixture
def actl(monkeypatch, systemd, ollama):
    with make_rundir() as path:
        monkeypatch.setattr(late_mod, "audit", lambda *a, **k: None)
        rd = RuntimeDir(path, group().gr_name)
        cfg = load_config({"runtime_dir": str(rd.path), "group": rd.group}, environ={}, config_file="/dev/null")
        yield AsyncController(config=cfg, dbus_transport=systemd, http_transport=ollama)


def test_restart_is_try_restart_by_default(actl, systemd):
    result = asyncio.run(actl.restart("r", wait=False))
    assert result.action == "queued" and systemd.jobs == ["TryRestartUnit"]


def test_a_stopped_unit_is_refused_with_exit_14_and_how_to_start_it(actl, systemd):
    systemd.set(active_state="inactive", sub_state="dead")
    with pytest.raises(UnitStopped) as info:
        asyncio.run(actl.restart("r"))
    err = info.value
    assert err.exit_code == 14 and systemd.jobs == []
    assert "sudo systemctl start ollama.service" in err.message and "--start" in err.message
    assert "\n" not in err.message and err.to_dict()["error"] == "unit-stopped"


def test_start_starts_a_stopped_unit_with_restart_unit(actl, systemd):
    systemd.set(active_state="inactive", sub_state="dead")
    result = asyncio.run(actl.restart("r", start=True))
    assert result.action == "restarted" and systemd.jobs == ["RestartUnit"] and systemd.active_state == "active"


@pytest.mark.parametrize(
    ("active", "result"), [("failed", "exit-code"), ("failed", "start-limit-hit"), ("inactive", "signal")]
)
def test_a_failed_unit_is_refused_with_exit_17_result_and_fix(actl, systemd, active, result):
    systemd.set(active_state=active, sub_state="failed", result=result)
    with pytest.raises(UnitFailed) as info:
        asyncio.run(actl.restart("r"))
    err = info.value
    assert err.exit_code == 17 and systemd.jobs == [] and f"Result={result}" in err.message
    assert "sudo systemctl reset-failed ollama.service && sudo systemctl start ollama.service" in err.message
    assert "journalctl -u ollama.service -n 50" in err.message and err.details["result"] == result


def test_a_unit_stopped_between_our_look_and_the_job_stays_stopped(actl, systemd):
    """TryRestartUnit is a no-op on a stopped unit; we say so instead of waiting for an API that never comes."""
    systemd.on_queue = lambda sd: sd.set(active_state="inactive", sub_state="dead")  # an admin's stop, just now
    with pytest.raises(UnitStopped, match="was stopped before the restart job ran"):
        asyncio.run(actl.restart("r", wait=True))
    assert systemd.jobs == ["TryRestartUnit"] and systemd.active_state == "inactive"


# -- probe: the one-shot verdict ---------------------------------------------------------------------------


@pytest.fixture
def probing(monkeypatch, systemd, ollama):
    """An AsyncController over the fake transports, with one runner on :40001 and an unreadable journal."""
    ollama.runners[40001] = "ok"
    socks = [("127.0.0.1", 11434, 999), ("127.0.0.1", 40001, 999)]  # the kernel's socket list: Ollama's uid 999
    monkeypatch.setattr(controller_mod.sockets, "listeners", lambda: socks)
    settings = {"watch_period": 0.01, "deep_confirm": 1.0, "probe_timeout": 0.05, "deep_timeout": 0.05}
    cfg = load_config(settings, environ={}, config_file="/dev/null")
    ctl = AsyncController(config=cfg, dbus_transport=systemd, http_transport=ollama)

    class Reader:  # the journal is not readable, as for most users
        from ollamactl.journal import JournalFacts

        facts = JournalFacts(problem="journal not readable by this user")

        async def update(self, inv):
            return self.facts

    ctl._journal = Reader()
    return ctl


def test_probe_healthy_in_one_sample_with_evidence(probing):
    report = asyncio.run(probing.probe(deep=True))
    assert (report.outcome, report.exit_code, report.samples) == ("healthy", 0, 1)
    assert "runner :40001 /slots answered" in report.evidence and "loaded: m:latest" in report.evidence


def test_probe_confirms_a_wedge_before_saying_so(probing, ollama):
    ollama.set_mode("silent")
    report = asyncio.run(probing.probe())
    assert (report.outcome, report.exit_code, report.samples, report.confirmed) == ("wedged", 11, 3, True)
    assert "3rd time" in report.evidence and report.since is not None


def test_probe_deep_wedged_takes_deep_confirm(probing, ollama):
    ollama.runners[40001] = "stuck"
    t0 = time.monotonic()
    report = asyncio.run(probing.probe(deep=True))
    assert report.outcome == "deep-wedged" and report.exit_code == 12 and report.confirmed
    assert time.monotonic() - t0 >= probing.config.deep_confirm and "no journal evidence" in report.evidence


def test_probe_of_a_stopped_unit_is_stopped_at_once(probing, systemd):
    systemd.set(active_state="inactive", sub_state="dead")
    report = asyncio.run(probing.probe(deep=True))
    assert (report.outcome, report.exit_code, report.liveness_seconds) == ("stopped", 14, None)


def test_deep_probe_off_is_liveness_only(probing, ollama):
    probing.config = dataclasses.replace(probing.config, deep_probe="off")
    ollama.runners[40001] = "stuck"
    assert asyncio.run(probing.probe(deep=True)).outcome == "healthy"
    assert [path for _, _, path in ollama.requests] == ["/api/version"]


def test_a_configured_model_that_is_not_loaded_is_not_deep_probed(probing, ollama):
    probing.config = dataclasses.replace(probing.config, model="llama3")
    ollama.runners[40001] = "stuck"
    report = asyncio.run(probing.probe(deep=True))
    assert report.outcome == "healthy" and "model llama3 is not loaded" in report.evidence


# -- probe --load: the disturbing check a human runs for #17408 --------------------------------------------------


def _loading(probing):
    probing.config = dataclasses.replace(probing.config, load_stuck_after=0.3)
    return probing


def test_probe_load_of_a_healthy_server_loads_and_says_so(probing, ollama):
    report = asyncio.run(_loading(probing).probe_load("other"))
    assert report.outcome == "healthy" and report.exit_code == 0 and "other loaded in" in report.evidence
    assert "other:latest" in ollama.models and ("/api/generate" in [p for _, _, p in ollama.requests])


def test_probe_load_of_a_load_that_never_starts_is_load_stuck(probing, ollama):
    ollama.load = "hang"
    t0 = time.monotonic()
    report = asyncio.run(_loading(probing).probe_load("other"))
    assert (report.outcome, report.exit_code, report.confirmed) == ("load-stuck", 19, True)
    assert "ollama #17408" in report.evidence and time.monotonic() - t0 < 5
    assert "no runner loading (the journal is not readable here)" in report.evidence


def test_probe_load_behind_a_busy_model_is_busy_not_load_stuck(probing, ollama):
    ollama.load, ollama.runners[40001] = "hang", "busy"
    report = asyncio.run(_loading(probing).probe_load("other"))
    assert report.outcome == "busy" and "waits for busy runner(s) :40001" in report.evidence


def test_probe_load_of_a_model_ollama_does_not_have_says_pull_it(probing):
    with pytest.raises(UsageError, match=r"no model missing \(HTTP 404\): pull it first"):
        asyncio.run(_loading(probing).probe_load("missing"))


def test_status_has_the_declared_fields(actl):
    """One declaration (models.Status) gives the API's attributes, the CLI's dict and the man page's list."""
    status = asyncio.run(actl.status())
    assert isinstance(status, Status)
    assert list(status.to_dict()) == [name for name, _, _ in fields_doc(Status)]
    assert status.healthy and status.api_version == "0.12.3" and status.to_dict()["api_version"] == "0.12.3"
