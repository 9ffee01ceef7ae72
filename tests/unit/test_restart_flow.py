"""The whole restart flow against in-memory transports: systemd over a fake bus, Ollama over a fake HTTP.

The controller's own code runs, and so does SystemdBus's (messages, the
JobRemoved wait, the error-name mapping) and probe's (the request deadline,
/api/version's checks): only the wire is fake (see world.FakeSystemd and
world.FakeOllama).  The runtime directory is real (root:GROUP 2770).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import statistics
import time

import pytest

from ollamactl import controller as controller_mod
from ollamactl import doctor, unitenv
from ollamactl import late as late_mod
from ollamactl import watch as watch_mod
from ollamactl.config import load_config
from ollamactl.controller import AsyncController, Controller
from ollamactl.errors import BudgetExhausted, PermissionDenied, RestartFailed, UrlUnknown, UsageError
from ollamactl.history import from_journal, log_command
from ollamactl.journal import Journal, field_name
from ollamactl.models import Instances, ProbeReport, RestartResult, Status, fields_doc
from ollamactl.runtime import RuntimeDir
from ollamactl.watch import Notifier, Watcher
from tests.unit.test_runtime_attacks import group, make_rundir
from tests.unit.world import FakeOllama, FakeSystemd

UNIT = "ollama.service"


@pytest.fixture
def wire(monkeypatch):
    """(settings, systemd, ollama): a controller's settings on a real runtime directory, and its transports."""
    monkeypatch.setattr(late_mod, "audit", lambda *a, **k: None)
    with make_rundir() as path:
        rd = RuntimeDir(path, group().gr_name)
        settings = {"runtime_dir": str(rd.path), "group": rd.group, "timeout": 10}
        yield settings, FakeSystemd(), FakeOllama()


def make(wire, **settings) -> AsyncController:
    base, systemd, ollama = wire
    cfg = load_config({**base, **settings}, environ={}, config_file="/dev/null")
    ctl = AsyncController(config=cfg, dbus_transport=systemd, http_transport=ollama)
    ctl._admin = False  # a member's process (the tests run as root, whose budget only warns)
    return ctl


def test_a_restart_goes_through_the_bus_and_waits_for_the_api(wire):
    _, systemd, ollama = wire
    result = asyncio.run(make(wire).restart("r"))
    assert isinstance(result, RestartResult) and result.action == "restarted" and result.job_result == "done"
    assert systemd.jobs == ["TryRestartUnit"] and result.old_invocation_id == "a" * 32
    assert result.new_invocation_id == f"{1:032x}" and result.api_version == "0.12.3"
    assert systemd.calls[:3] == ["GetAll", "GetAll", "GetNameOwner"]  # look, then subscribe before queueing


# -- (a) coalescing -----------------------------------------------------------------------------------------------


def test_a_wedge_seen_before_the_units_last_start_is_not_restarted_again(wire):
    """Many detectors of one wedge cause one restart: those who saw it before the last start skip."""
    _, systemd, _ = wire
    seen = systemd.started_at - 5  # the unit started 5 s after this detector saw the wedge
    result = asyncio.run(make(wire).restart("late detector", observed_at=seen))
    assert result.action == "skipped" and result.job is None and result.new_invocation_id == "a" * 32
    assert systemd.jobs == [] and "TryRestartUnit" not in systemd.calls
    result = asyncio.run(make(wire).restart("fresh detector", wait=False, observed_at=systemd.started_at + 5))
    assert result.action == "queued" and systemd.jobs == ["TryRestartUnit"]


def test_late_detectors_do_not_queue_on_the_lock(wire):
    """A detector whose wedge was already dealt with returns at once, even while another caller holds the lock."""
    base, systemd, _ = wire
    fd = os.open(base["runtime_dir"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # someone else's restart in progress, holding the lock
        t0 = time.monotonic()
        result = asyncio.run(make(wire, timeout=3).restart("late", observed_at=systemd.started_at - 5))
        assert result.action == "skipped" and time.monotonic() - t0 < 1.0
        assert result.api_version == "0.12.3"  # it still waits for the API, which answers
    finally:
        os.close(fd)
    assert systemd.jobs == []


def test_a_detector_that_looks_between_a_restarts_stop_and_start_skips_instead_of_seeing_a_stop(wire):
    """systemd's restart job leaves the unit inactive, its job pending, between stop and start: that is no
    admin's stop.  A detector of the same wedge looking then waits for the start and skips (the CI once saw
    2 of 100 concurrent detectors answer "stopped")."""
    _, systemd, _ = wire
    systemd.set(stop_seconds=0.05, dead_seconds=0.3)
    seen = time.time()

    async def two() -> list[RestartResult]:
        first = asyncio.create_task(make(wire).restart("first", observed_at=seen))
        while systemd.active_state != "inactive":
            await asyncio.sleep(0.005)
        second = await make(wire).restart("second", observed_at=seen)  # looks while the unit is down, job pending
        return [await first, second]

    first, second = asyncio.run(two())
    assert (first.action, second.action) == ("restarted", "skipped") and systemd.jobs == ["TryRestartUnit"]
    assert second.new_invocation_id == first.new_invocation_id


def test_a_tty_progress_line_says_what_the_restart_waits_for(wire):
    """Stopping (with the time left until SIGKILL from TimeoutStopUSec), then the API; nothing without a hook."""
    _, systemd, _ = wire
    systemd.set(stop_seconds=1.2, timeout_stop=10.0)
    lines: list[str] = []
    asyncio.run(make(wire, restart_backoff=0).restart("r", progress=lines.append))
    assert lines[0].startswith("waiting for the restart lock on ")
    stopping = [x for x in lines if x.startswith("stopping")]
    assert len(stopping) >= 2, lines  # redrawn every half second while it waits
    assert stopping[0] == "stopping ollama.service (SIGKILL in 10s if it ignores SIGTERM)"
    assert stopping[-1] == "stopping ollama.service (SIGKILL in 9s if it ignores SIGTERM)"
    assert lines[-1] == "waiting for Ollama's API at http://127.0.0.1:11434"
    ctl = make(wire, restart_backoff=0)

    async def no_look(*a, **k):
        raise AssertionError("the job was watched for a progress line nobody asked for")

    ctl._job_step = no_look  # type: ignore[method-assign]
    assert asyncio.run(ctl.restart("r")).action == "restarted"


# -- (b) the budget -----------------------------------------------------------------------------------------------


def test_an_exhausted_budget_queues_no_job_and_holds(wire):
    _, systemd, _ = wire
    ctl = make(wire, max_restarts=1, restart_window=600)
    assert asyncio.run(ctl.restart("first", wait=False)).action == "queued"
    for attempt in ("second", "third"):  # the hold persists: every further attempt is refused too
        with pytest.raises(BudgetExhausted) as info:
            asyncio.run(ctl.restart(attempt, wait=False))
        err = info.value
        assert err.exit_code == 8 and 590 < err.details["retry_after"] <= 600 and "\n" not in err.message
    assert systemd.jobs == ["TryRestartUnit"]


def test_the_watchdog_holds_off_the_bus_while_its_budget_is_exhausted(wire):
    """After BudgetExhausted the watchdog makes no restart attempt at all (not even a look) until the hold ends."""
    _, systemd, _ = wire
    ctl = make(wire, max_restarts=1, restart_window=600)
    watcher = Watcher(ctl, Notifier(address=""))

    async def go() -> None:
        await watcher.recover("wedged", "no answer", None)  # restarts
        await watcher.recover("wedged", "no answer", None)  # the budget says no: hold
        calls = len(systemd.calls)
        await watcher.recover("wedged", "no answer", None)  # held: nothing sent
        assert len(systemd.calls) == calls

    asyncio.run(go())
    assert systemd.jobs == ["TryRestartUnit"] and watcher.restarts == 1
    assert watcher.hold_until > time.time() + 590


# -- (c) the new process died ---------------------------------------------------------------------------------


def test_a_new_process_that_dies_while_starting_fails_fast_not_by_timeout(wire):
    _, systemd, ollama = wire
    ollama.set_mode("refused")  # the new process never listens...

    def crash_soon(sd: FakeSystemd) -> None:  # ...and exits 0.2 s after its start: systemd will retry it
        asyncio.get_running_loop().call_later(0.2, lambda: sd.set(active_state="activating", sub_state="auto-restart"))

    systemd.on_restart = crash_soon
    t0 = time.monotonic()
    with pytest.raises(RestartFailed) as info:
        asyncio.run(make(wire, timeout=5).restart("r"))
    assert time.monotonic() - t0 < 1.5, "noticed the death only at the timeout"
    err = info.value
    assert err.exit_code == 6 and "stopped again while starting" in err.message and "\n" not in err.message
    assert err.details["sub_state"] == "auto-restart"


# -- (d) polkit's refusal -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bus_error",
    ["org.freedesktop.DBus.Error.AccessDenied", "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"],
)
def test_a_denial_from_the_bus_is_permission_denied_with_exit_3(wire, bus_error):
    _, systemd, _ = wire
    systemd.deny["TryRestartUnit"] = bus_error
    with pytest.raises(PermissionDenied) as info:
        asyncio.run(make(wire).restart("r"))
    err = info.value
    assert (
        err.exit_code == 3 and err.details["bus_error"] == bus_error and err.to_dict()["error"] == "permission-denied"
    )
    assert err.message.startswith("not allowed to try-restart ollama.service") and "\n" not in err.message
    assert systemd.jobs == []


# -- readiness: reported within a few ms of the API answering ----------------------------------------------------


def test_readiness_is_reported_within_25ms_of_the_api_answering(wire):
    _, systemd, ollama = wire

    def listen_later(sd: FakeSystemd) -> None:
        ollama.set_mode("refused")
        asyncio.get_running_loop().call_later(0.3, ollama.set_mode, "ok")

    systemd.on_restart = listen_later
    ctl = make(wire, max_restarts=100, restart_backoff=0)
    lags = []
    for _ in range(5):
        result = asyncio.run(ctl.restart("r"))
        lags.append(time.monotonic() - ollama.up_since)
        assert result.action == "restarted" and result.ready_seconds >= 0.29
    print(f"readiness lag: median {statistics.median(lags) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms")
    assert statistics.median(lags) < 0.025


# -- the sync face ------------------------------------------------------------------------------------------------


def sync(wire, **settings) -> Controller:
    base, systemd, ollama = wire
    return Controller(**base, **settings, config_file="/dev/null", dbus_transport=systemd, http_transport=ollama)


def test_with_controller_keeps_one_bus_connection(wire):
    _, systemd, _ = wire
    with sync(wire) as ctl:
        assert ctl.status().healthy and ctl.status().api_version == "0.12.3"
        assert ctl.probe().outcome == "healthy"
    assert systemd.connects == 1 and systemd.open == []
    ctl = sync(wire)
    ctl.status()
    ctl.status()
    assert systemd.connects == 3 and systemd.open == []  # without the with-block: one connection per call


def test_the_sync_controller_refuses_to_block_a_running_loop(wire):
    _, systemd, _ = wire
    ctl = sync(wire)

    async def inside() -> None:
        with pytest.raises(UsageError, match="AsyncController") as info:
            ctl.restart("r")
        assert "\n" not in info.value.message and info.value.exit_code == 2
        with pytest.raises(UsageError, match="AsyncController"):
            ctl.__enter__()

    t0 = time.monotonic()
    asyncio.run(inside())
    assert time.monotonic() - t0 < 1 and systemd.calls == [] and systemd.connects == 0


# -- results: declared once -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RestartResult, Status, ProbeReport, Instances])
def test_every_result_field_is_documented(cls):
    docs = fields_doc(cls)
    assert docs and all(name and kind and doc for name, kind, doc in docs), docs


def test_status_is_built_field_by_field_from_the_unit(wire):
    _, systemd, _ = wire
    status = asyncio.run(make(wire).status())
    assert isinstance(status, Status) and status.healthy and status.unit == UNIT
    assert status.to_dict() == {
        "healthy": True, "unit": UNIT, "load_state": "loaded", "active_state": "active", "sub_state": "running",
        "result": "success", "main_pid": 4242, "invocation_id": "a" * 32,
        "active_enter_timestamp": int(systemd.started_at * 1e6) / 1e6, "n_restarts": 0,
        "fragment_path": f"/lib/systemd/system/{UNIT}", "url": "http://127.0.0.1:11434", "api_ok": True,
        "api_version": "0.12.3", "api_error": None, "instance": None,
    }  # fmt: skip
    assert [name for name, _, _ in fields_doc(Status)] == list(status.to_dict())


# -- instances: the URL from the unit's own environment ------------------------------------------------------------


def test_the_url_comes_from_the_units_environment_file_over_its_environment(wire, tmp_path):
    """One Ollama per GPU: its OLLAMA_HOST is in its unit (EnvironmentFile= overrides Environment=)."""
    _, systemd, ollama = wire
    env = tmp_path / "gpu1.env"
    env.write_text('# second GPU\nOLLAMA_HOST="0.0.0.0:11502"\nCUDA_VISIBLE_DEVICES=1\n')
    systemd.set(environment=["OLLAMA_HOST=127.0.0.1:11999"], environment_files=[(str(env), False)])
    ollama.port = 11502
    status = asyncio.run(make(wire).status())
    assert status.url == "http://127.0.0.1:11502" and status.api_ok  # 0.0.0.0: every interface, so loopback
    result = asyncio.run(make(wire).restart("r"))
    assert result.action == "restarted" and result.api_version == "0.12.3"  # readiness asked 11502


def unreadable_env_file(monkeypatch, path, text: str = "OLLAMA_HOST=127.0.0.1:11502\n"):
    """An EnvironmentFile of mode 0600 root:root, as a member (or the watchdog's user) finds it.

    The tests run as root, whom the kernel lets read it: so read() answers
    EACCES for it, as open(2) does for anyone else.
    """
    path.write_text(text)
    path.chmod(0o600)
    real = unitenv.read

    def read(name: str) -> str:
        if name == str(path) and path.stat().st_mode & 0o077 == 0 and os.geteuid() == 0:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return real(name)

    monkeypatch.setattr(unitenv, "read", read)
    return path


@pytest.fixture
def gpu1(wire, monkeypatch, tmp_path):
    """Instance gpu1 listens on 11502, set in its unreadable EnvironmentFile; nothing listens on 11434."""
    _, systemd, ollama = wire
    env = unreadable_env_file(monkeypatch, tmp_path / "gpu1.env")
    systemd.set(environment_files=[(str(env), False)])
    ollama.port = 11502
    return env


def test_an_unreadable_environment_file_refuses_the_probe_and_says_what_to_do(wire, gpu1):
    """Old code: a WARNING, then 127.0.0.1:11434 probed (down here), as if it were gpu1's URL."""
    base, systemd, ollama = wire
    for call in (lambda c: c.probe(), lambda c: c.status(), lambda c: c.url()):
        with pytest.raises(UrlUnknown) as info:
            asyncio.run(call(make(wire)))
        err = info.value
        assert err.exit_code == 18 and err.kind == "url-unknown" and "\n" not in err.message
        assert f"cannot read {gpu1} (Permission denied), which may set OLLAMA_HOST" in err.message
        group = base["group"]
        assert f"readable by group {group} (sudo chgrp {group} {gpu1} && sudo chmod 640 {gpu1})" in err.message
        assert "url" in err.details["fix"] and err.details["files"] == [str(gpu1)]
    assert ollama.requests == [] and systemd.jobs == []  # nothing probed, nothing restarted


def test_a_manual_restart_that_would_wait_is_refused_before_restarting(wire, gpu1):
    """The wait needs the URL; --no-wait does not, and restarts (a member asked for exactly that)."""
    _, systemd, ollama = wire
    with pytest.raises(UrlUnknown):
        asyncio.run(make(wire).restart("r"))
    assert systemd.jobs == [] and ollama.requests == []
    assert asyncio.run(make(wire).restart("r", wait=False)).action == "queued"
    assert systemd.jobs == ["TryRestartUnit"] and ollama.requests == []


def test_the_watchdog_never_restarts_while_the_url_is_unknown_says_so_once_and_recovers(wire, gpu1, monkeypatch):
    """Old code: 11434 refused, so gpu1 (healthy, on 11502) was restarted as down after 3 probes."""
    _, systemd, ollama = wire
    logged: list[tuple[str, str]] = []
    monkeypatch.setattr(watch_mod, "log", lambda level, message, **fields: logged.append((level, message)))
    ctl = make(wire)
    ctl._journal = _NoJournal()
    watcher = Watcher(ctl, Notifier(address=""))

    async def ticks(n: int) -> None:
        for _ in range(n):
            await watcher.tick(False)

    asyncio.run(ticks(6))
    assert systemd.jobs == [] and ollama.requests == [] and watcher.metrics.outcome is None
    errors = [m for level, m in logged if level in ("ERROR", "WARNING")]
    assert len(errors) == 1 and "not probing, never restarting" in errors[0] and str(gpu1) in errors[0]
    gpu1.chmod(0o640)  # the fix: readable by the group (root:ollamactl on a real host)
    asyncio.run(ticks(2))
    assert systemd.jobs == [] and watcher.last is not None and watcher.last[0] == "healthy"
    assert {port for _, port, _ in ollama.requests} == {11502}
    assert any("known again (http://127.0.0.1:11502)" in m for level, m in logged if level == "INFO")


def test_doctor_names_the_unreadable_file_and_the_fix(wire, gpu1, monkeypatch):
    base, systemd, ollama = wire

    def controller(config):
        return AsyncController(config=config, dbus_transport=systemd, http_transport=ollama)

    monkeypatch.setattr(controller_mod, "AsyncController", controller)
    cfg = load_config(base, environ={}, config_file="/dev/null")
    check = asyncio.run(doctor._ollama_check(cfg))
    assert (check.name, check.ok) == ("url", False)
    assert f"cannot read {gpu1} (Permission denied)" in check.detail and "fix" not in check.detail
    assert check.fix is not None and f"chmod 640 {gpu1}" in check.fix and "url = " in check.fix
    assert ollama.requests == []


class _NoJournal:
    """The journal as most users see it: not readable."""

    from ollamactl.journal import JournalFacts

    facts = JournalFacts(problem="journal not readable by this user")

    async def update(self, inv):
        return self.facts


def test_url_says_where_the_units_ollama_is_asked(wire):
    _, systemd, _ = wire
    systemd.set(environment=["OLLAMA_HOST=0.0.0.0:11777"])
    assert asyncio.run(make(wire).url()) == "http://127.0.0.1:11777"
    assert asyncio.run(make(wire, url="http://127.0.0.1:9").url()) == "http://127.0.0.1:9"


def test_an_explicit_url_wins_over_the_units(wire):
    _, systemd, ollama = wire
    systemd.set(environment=["OLLAMA_HOST=127.0.0.1:11999"])
    assert asyncio.run(make(wire, url="http://127.0.0.1:11434").status()).url == "http://127.0.0.1:11434"
    assert asyncio.run(make(wire).status()).url == "http://127.0.0.1:11999"


def test_instances_lists_each_with_its_url_and_health(wire, tmp_path):
    base, systemd, ollama = wire
    systemd.unit = "ollama@11434.service"
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(
        '[instances.gpu0]\nunit = "ollama@11434.service"\n[instances.gpu1]\nunit = "ollama@11435.service"\n'
        'url = "http://127.0.0.1:11435"\n'
    )
    systemd.missing = {"ollama@11435.service"}
    cfg = load_config(base, environ={}, config_file=cfg_file)
    found = asyncio.run(AsyncController(config=cfg, dbus_transport=systemd, http_transport=ollama).instances())
    gpu0, gpu1 = found.instances
    assert (gpu0.instance, gpu0.unit, gpu0.url, gpu0.healthy) == ("gpu0", "ollama@11434.service", ollama.url, True)
    assert (gpu1.instance, gpu1.load_state, gpu1.healthy) == ("gpu1", "error", False) and not found.healthy
    assert "ollama@11435.service" in gpu1.api_error and "not" in gpu1.api_error  # what is wrong, for the table


# -- what history reads back -------------------------------------------------------------------------------------


class RecordingJournal(Journal):
    """The journal writer, with the datagram replaced by a list of the fields it would have carried."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, str]] = []

    def send(self, message: str, priority: int = 6, **fields) -> bool:
        self.records.append({field_name(k): str(v) for k, v in fields.items() if v is not None})
        return True


def test_every_decision_is_recorded_with_what_history_reads_back(wire, monkeypatch):
    """The restart's audit records, as journald would store them (plus its trusted fields), read by history."""
    _, systemd, _ = wire
    recorder = RecordingJournal()

    def record(message, **fields):
        recorder.send_record(message, "INFO", fields, "f", 1, "fn")

    monkeypatch.setattr(late_mod, "audit", record)  # every decision (late.journal, late.not_done: both paths)
    ctl = make(wire, restart_backoff=0, max_restarts=2)
    asyncio.run(ctl.restart("by hand", verdict="wedged", evidence="GET /api/version: no answer"))
    asyncio.run(ctl.restart("no wait", wait=False))
    with pytest.raises(BudgetExhausted):
        asyncio.run(ctl.restart("one too many"))
    trusted = {"_UID": "0", "_PID": str(os.getpid()), "_BOOT_ID": "b" * 32, "_COMM": "ollamactl"}
    records = [{"__REALTIME_TIMESTAMP": str(1000 + i), **trusted, **r} for i, r in enumerate(recorder.records)]
    waited, queued, refused = from_journal(records, {}, 252)
    assert (waited.outcome, waited.verdict, waited.evidence, waited.reason) == (
        "restarted", "wedged", "GET /api/version: no answer", "by hand"
    )  # fmt: skip
    assert waited.old_invocation_id == "a" * 32 and waited.new_invocation_id == f"{1:032x}"
    assert waited.recovery_seconds is not None and waited.recovery_seconds > 0 and waited.verified
    assert waited.log_command == log_command("a" * 32, 252)
    assert queued.outcome == "queued" and queued.old_invocation_id == f"{1:032x}" and queued.recovery_seconds is None
    assert (refused.outcome, refused.recovery_note, refused.log_command) == (
        "budget-exhausted", "nothing was restarted", None
    )  # fmt: skip
    assert systemd.jobs == ["TryRestartUnit", "TryRestartUnit"]
