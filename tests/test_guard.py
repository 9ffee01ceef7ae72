"""The guard around the real ``ollama`` client, against the stand-in, with a recording controller.

The controller is ours to replace: ``Recorder`` answers the guard's verdict
with a scripted outcome (the verdict's own logic is tested with the probes)
and its "restart" clears the stand-in's fault (systemd is not involved).  What
is under test is what the guard does with the client's error and the verdict:
only a wedge is restarted, everything else re-raises the client's own error
with the verdict attached.  The real restart path is covered end to end in
tests/e2e/test_guard.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from ollamactl.config import Config, load_config
from ollamactl.errors import BusUnavailable, OllamactlError, PermissionDenied, TimedOut, UnitFailed, UnitStopped
from ollamactl.guard import aguard, guard, verdict_deadline  # noqa: E402 - after the importorskip in test_standin
from tests.test_standin import MODEL, Standin, httpx, ollama

REFUSED = (ConnectionError, httpx.ConnectError)  # ollama >= 0.4 / 0.3


@dataclass
class Recorder:
    """Stands in for Controller: a scripted verdict, and a restart that clears the stand-in's fault.

    outcome: the verdict's outcome, or an exception the probe raises, or "hang" (never answers).
    """

    standin: Standin
    outcome: str | BaseException = "deep-wedged"
    deny: bool = False
    restart_error: OllamactlError | None = None  # the restart raises this
    calls: list[tuple[str, float]] = field(default_factory=list)  # restarts: (reason, observed_at)
    verdicts: list[tuple[Any, Any]] = field(default_factory=list)  # restarts: (verdict, evidence) recorded with them
    probes: list[bool] = field(default_factory=list)  # verdicts asked for: deep?
    waits: list[Any] = field(default_factory=list)  # each verdict's LoadWait (the failed call's model), or None
    config: Config = field(default_factory=lambda: load_config(None, config_file=os.devnull, environ={}))

    def _verdict(self, deep: bool) -> Any:
        self.probes.append(deep)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return SimpleNamespace(outcome=self.outcome, evidence=f"scripted: {self.outcome}")

    def probe(self, deep: bool = False, wait: Any = None) -> Any:
        self.waits.append(wait)
        if self.outcome == "hang":
            self.probes.append(deep)
            time.sleep(30)
        return self._verdict(deep)

    def restart(self, reason: str, *, observed_at: float, verdict=None, evidence=None) -> str:
        self.calls.append((reason, observed_at))
        self.verdicts.append((verdict, evidence))
        if self.deny:
            raise PermissionDenied("not allowed to restart ollama.service: add yourself to group ollamactl")
        if self.restart_error is not None:
            raise self.restart_error
        self.standin.set_mode("ok")
        return "restarted"


class AsyncRecorder(Recorder):
    async def probe(self, deep: bool = False, wait: Any = None) -> Any:  # type: ignore[override]
        self.waits.append(wait)
        if self.outcome == "hang":
            self.probes.append(deep)
            await asyncio.sleep(30)
        return self._verdict(deep)

    async def restart(self, reason: str, *, observed_at: float, verdict=None, evidence=None) -> str:  # type: ignore[override]
        return Recorder.restart(self, reason, observed_at=observed_at, verdict=verdict, evidence=evidence)


def loaded(s: Standin) -> Standin:
    """The model loaded (as it is when an app has been using it), then the server's fault switched on."""
    assert s.client(timeout=5).generate(MODEL, "warm up", options={"num_predict": 1})["done"]
    return s


def notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


# -- the cases ----------------------------------------------------------------------------------


def test_slow_generation_past_the_client_timeout_is_busy_not_restarted(launch):
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.5"})  # 8 tokens: 4 s, against a 1 s client timeout
    rec = Recorder(s, outcome="busy")
    client = guard(s.client(timeout=1), controller=rec)
    with pytest.raises(httpx.TimeoutException) as info:
        client.generate(MODEL, "a long answer", options={"num_predict": 8})
    assert rec.calls == [] and client.restarts == []  # not restarted
    assert rec.probes == [True]  # one verdict, deep
    assert info.value.ollamactl_verdict.outcome == "busy"
    assert info.value.ollamactl_error is None
    assert "ollamactl: Ollama is busy (scripted: busy); not restarted" in notes(info.value)


def test_a_failed_call_gives_the_verdict_its_own_wait_for_the_model(launch):
    """Issue 15: the app's request is the only evidence of a load that never starts (#17408)."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.5"})
    rec = Recorder(s, outcome="busy")
    client = guard(s.client(timeout=1), controller=rec)
    t0 = time.time()
    with pytest.raises(httpx.TimeoutException):
        client.generate(MODEL, "a long answer", options={"num_predict": 8})
    (wait,) = rec.waits
    assert wait.model == MODEL and t0 <= wait.since <= t0 + 1
    with pytest.raises(httpx.TimeoutException):
        client.generate(model=MODEL, prompt="again", options={"num_predict": 8})
    assert rec.waits[-1].model == MODEL


def test_a_load_that_never_starts_is_restarted_once_and_the_retry_succeeds(launch):
    """#17408 as the stand-in models it: loaded models answer, a load hangs without a word."""
    s = launch()
    s.set_mode("stuck-eviction")
    rec = Recorder(s, outcome="load-stuck")
    client = guard(s.client(timeout=2), controller=rec)
    answer = client.generate(MODEL, "hello", options={"num_predict": 1})
    assert answer["done"] and len(rec.calls) == 1 and rec.waits[0].model == MODEL


def test_stuck_inference_is_restarted_once_and_the_retry_succeeds(launch):
    s = loaded(launch())
    s.set_mode("stuck-inference")
    rec = Recorder(s, outcome="deep-wedged")
    client = guard(s.client(timeout=1), controller=rec)
    t0 = time.time()
    r = client.generate(MODEL, "hi", options={"num_predict": 2})
    assert r["done"] and r["eval_count"] == 2
    assert len(rec.calls) == 1 and rec.probes == [True]
    reason, observed_at = rec.calls[0]
    assert "generate()" in reason and "Timeout" in reason
    assert t0 <= observed_at <= t0 + 0.5  # when the failed call started
    assert client.restarts == ["restarted"]
    assert [v.outcome for v in client.verdicts] == ["deep-wedged"]
    assert rec.verdicts == [("deep-wedged", "scripted: deep-wedged")]  # recorded with the decision (history)


def test_refused_while_stopped_is_re_raised_not_restarted(launch):
    s = launch()
    s.proc.kill()
    s.proc.wait()
    rec = Recorder(s, outcome="stopped")
    with pytest.raises(REFUSED) as info:
        guard(s.client(timeout=1), controller=rec).list()
    assert rec.calls == [] and rec.probes == [True]
    assert info.value.ollamactl_verdict.outcome == "stopped"
    assert "Ollama is stopped" in notes(info.value)


# -- every other verdict, and none -------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["healthy", "busy", "loading", "starting", "stopped", "failed", "down", "new"])
def test_only_a_wedge_is_restarted(launch, outcome):
    s = launch()
    s.set_mode("hang-generate")
    rec = Recorder(s, outcome=outcome)
    with pytest.raises(httpx.TimeoutException) as info:
        guard(s.client(timeout=0.3), controller=rec).generate(MODEL, "hi")
    assert rec.calls == [] and info.value.ollamactl_verdict.outcome == outcome


@pytest.mark.parametrize(
    "error", [BusUnavailable("cannot connect to the system bus"), PermissionDenied("no"), RuntimeError("a bug")]
)
def test_without_a_verdict_nothing_is_restarted(launch, error):
    s = launch()
    s.proc.kill()
    s.proc.wait()
    rec = Recorder(s, outcome=error)
    with pytest.raises(REFUSED) as info:
        guard(s.client(timeout=1), controller=rec).list()
    assert rec.calls == []
    assert info.value.ollamactl_verdict is None and info.value.ollamactl_error is error
    assert f"ollamactl: no verdict ({type(error).__name__}: {error}); Ollama was not restarted" in notes(info.value)


def test_the_verdict_is_bounded_in_time(launch):
    s = launch()
    s.proc.kill()
    s.proc.wait()
    rec = Recorder(s, outcome="hang")
    t0 = time.monotonic()
    with pytest.raises(REFUSED) as info:
        guard(s.client(timeout=1), controller=rec, verdict_timeout=0.5).list()
    assert time.monotonic() - t0 < 3
    assert isinstance(info.value.ollamactl_error, TimedOut) and rec.calls == []


def test_the_default_bound_comes_from_the_config(launch):
    s = launch()
    rec = Recorder(s)
    effect = guard(s.client(), controller=rec)._verdict_effect(rec, None)
    # shipped defaults: deep_confirm 8 + 3 x (period 1 + probe 1 + http 5), then one more sample: bus 10, 1, 5
    assert (effect.deep, effect.timeout) == (True, 8 + 3 * 7 + 16) and verdict_deadline(rec.config) == 45
    rec.config = load_config(
        {"deep_confirm": 2, "http_timeout": 1, "bus_timeout": 1}, config_file=os.devnull, environ={}
    )
    assert guard(s.client(), controller=rec)._verdict_effect(rec, None).timeout == 2 + 3 * 3 + 3


def test_the_verdict_is_deep_unless_told_otherwise(launch):
    s = launch()
    s.proc.kill()
    s.proc.wait()
    rec = Recorder(s, outcome="down")
    with pytest.raises(REFUSED):
        guard(s.client(timeout=1), controller=rec).list()
    with pytest.raises(REFUSED):
        guard(s.client(timeout=1), controller=rec, deep=False).list()
    assert rec.probes == [True, False]


# -- the restart path, as before ---------------------------------------------------------------------


def test_without_retry_the_error_is_raised_after_the_restart(launch):
    s = loaded(launch())
    s.set_mode("stuck-inference")
    rec = Recorder(s)
    with pytest.raises(httpx.TimeoutException) as info:
        guard(s.client(timeout=1), controller=rec, retry=False).chat(MODEL, messages=[{"role": "user", "content": "x"}])
    assert len(rec.calls) == 1
    assert "Ollama is deep-wedged (scripted: deep-wedged); restarted (restarted)" in notes(info.value)


def test_a_refused_restart_explains_itself(launch):
    s = launch()
    s.set_mode("hang-generate")
    rec = Recorder(s, outcome="wedged", deny=True)
    with pytest.raises(PermissionDenied, match="group ollamactl") as info:
        guard(s.client(timeout=1), controller=rec).generate(MODEL, "hi")
    assert isinstance(info.value.__cause__, httpx.TimeoutException)
    assert info.value.__cause__.ollamactl_verdict.outcome == "wedged"


@pytest.mark.parametrize("error", [UnitStopped("ollama.service is stopped"), UnitFailed("ollama.service is stopped")])
def test_a_unit_stopped_between_verdict_and_restart_re_raises_the_apps_error(launch, error):
    s = launch()
    s.set_mode("hang-generate")
    rec = Recorder(s, outcome="wedged", restart_error=error)
    with pytest.raises(httpx.TimeoutException) as info:
        guard(s.client(timeout=0.5), controller=rec).generate(MODEL, "hi")
    assert len(rec.calls) == 1 and info.value.ollamactl_error is rec.restart_error
    assert "Ollama is wedged (scripted: wedged); not restarted: ollama.service is stopped" in notes(info.value)


def test_other_errors_pass_through_untouched(launch):
    s = launch()
    rec = Recorder(s)
    with pytest.raises(ollama.ResponseError):
        guard(s.client(timeout=1), controller=rec).generate("no-such-model", "hi")
    assert rec.calls == [] and rec.probes == []


def test_stream_that_fails_before_its_first_chunk_is_retried(launch):
    s = loaded(launch())
    s.set_mode("stuck-inference")
    rec = Recorder(s)
    chunks = list(guard(s.client(timeout=1), controller=rec).generate(MODEL, "hi", stream=True))
    assert chunks[-1]["done"] and len(rec.calls) == 1


def test_stream_that_stalls_after_a_chunk_is_restarted_not_retried(launch):
    s = loaded(launch(env={"STANDIN_TOKEN_SECONDS": "0.05"}))
    rec = Recorder(s)
    chunks = []
    with pytest.raises(httpx.TimeoutException):
        for chunk in guard(s.client(timeout=1), controller=rec).generate(MODEL, "hi", stream=True):
            chunks.append(chunk)
            if len(chunks) == 1:  # stall once: a retry (after the restart healed it) would run to the end
                s.set_mode("stuck-inference")
    assert chunks and not any(c["done"] for c in chunks) and len(rec.calls) == 1


# -- the asyncio face: the same core ------------------------------------------------------------------


def test_async_busy_is_not_restarted_and_a_wedge_is(launch):
    s = loaded(launch(env={"STANDIN_TOKEN_SECONDS": "0.5"}))
    rec = AsyncRecorder(s, outcome="busy")

    async def run():
        client = aguard(ollama.AsyncClient(host=s.url, timeout=1), controller=rec)
        with pytest.raises(httpx.TimeoutException) as info:
            await client.generate(MODEL, "a long answer", options={"num_predict": 8})
        assert info.value.ollamactl_verdict.outcome == "busy" and rec.calls == []
        s.set_mode("stuck-inference")
        rec.outcome = "deep-wedged"
        parts = [
            p
            async for p in await client.chat(
                MODEL, messages=[{"role": "user", "content": "x"}], stream=True, options={"num_predict": 2}
            )
        ]
        return client, parts

    client, parts = asyncio.run(run())
    assert parts[-1]["done"] and len(rec.calls) == 1
    assert [v.outcome for v in client.verdicts] == ["busy", "deep-wedged"]


def test_async_refused_stopped_and_bounded(launch):
    s = launch()
    s.proc.kill()
    s.proc.wait()
    rec = AsyncRecorder(s, outcome="stopped")

    async def run():
        with pytest.raises(REFUSED) as stopped:
            await aguard(ollama.AsyncClient(host=s.url, timeout=1), controller=rec).list()
        rec.outcome = "hang"
        t0 = time.monotonic()
        with pytest.raises(REFUSED) as hung:
            await aguard(ollama.AsyncClient(host=s.url, timeout=1), controller=rec, verdict_timeout=0.3).list()
        return stopped.value, hung.value, time.monotonic() - t0

    stopped, hung, took = asyncio.run(run())
    assert stopped.ollamactl_verdict.outcome == "stopped" and rec.calls == []
    assert isinstance(hung.ollamactl_error, TimedOut) and took < 3


def test_async_refused_restart_explains_itself(launch):
    s = launch()
    s.set_mode("hang-generate")
    rec = AsyncRecorder(s, outcome="wedged", deny=True)

    async def run():
        await aguard(ollama.AsyncClient(host=s.url, timeout=1), controller=rec).generate(MODEL, "hi")

    with pytest.raises(OllamactlError, match="group ollamactl") as info:
        asyncio.run(run())
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


# -- the real controller, where no system bus can be reached -----------------------------------------


def test_the_real_controllers_without_a_bus_give_no_verdict_and_restart_nothing(launch, monkeypatch, tmp_path):
    """The guard's calls match Controller / AsyncController; without the bus: the app's error, the reason attached."""
    from ollamactl.controller import AsyncController, Controller

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/nowhere")
    s = launch()
    s.proc.kill()
    s.proc.wait()
    settings = {"url": s.url, "bus_timeout": 1}
    sync = guard(s.client(timeout=1), controller=Controller(config_file=os.devnull, **settings))
    with pytest.raises(REFUSED) as info:
        sync.list()
    assert isinstance(info.value.ollamactl_error, BusUnavailable) and sync.restarts == []

    async def run():
        client = aguard(
            ollama.AsyncClient(host=s.url, timeout=1), controller=AsyncController(config_file=os.devnull, **settings)
        )
        with pytest.raises(REFUSED) as info:
            await client.list()
        return info.value, client.restarts

    err, restarts = asyncio.run(run())
    assert isinstance(err.ollamactl_error, BusUnavailable) and restarts == []
    assert "ollamactl: no verdict (BusUnavailable: " in notes(err)
