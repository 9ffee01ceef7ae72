"""The guard around the real ``ollama`` client, against the stand-in, with a recording controller.

Here a "restart" clears the stand-in's fault (the controller is ours to
replace; systemd is not involved).  The real restart path is covered end to
end in tests/e2e/test_guard.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from ollamactl.errors import PermissionDenied
from ollamactl.guard import aguard, guard  # noqa: E402 - after the importorskip in test_standin
from tests.test_standin import MODEL, Standin, httpx, ollama


@dataclass
class Recorder:
    """Stands in for Controller/AsyncController: records each restart and clears the fault."""

    standin: Standin
    deny: bool = False
    calls: list[tuple[str, float]] = field(default_factory=list)

    def restart(self, reason: str, *, observed_at: float) -> str:
        self.calls.append((reason, observed_at))
        if self.deny:
            raise PermissionDenied("not allowed to restart ollama.service: add yourself to group ollamactl")
        self.standin.set_mode("ok")
        return "restarted"


class AsyncRecorder(Recorder):
    async def restart(self, reason: str, *, observed_at: float) -> str:  # type: ignore[override]
        return Recorder.restart(self, reason, observed_at=observed_at)


def test_timeout_restarts_once_and_the_retry_succeeds(launch):
    s = launch("hang-generate")
    rec = Recorder(s)
    client = guard(s.client(timeout=1), controller=rec)
    t0 = time.time()
    r = client.generate(MODEL, "hi", options={"num_predict": 2})
    assert r["done"] and r["eval_count"] == 2
    assert len(rec.calls) == 1
    reason, observed_at = rec.calls[0]
    assert "generate()" in reason and "Timeout" in reason
    assert t0 <= observed_at <= t0 + 0.5  # when the failed call started
    assert client.restarts == ["restarted"]


def test_without_retry_the_error_is_raised_after_the_restart(launch):
    s = launch("hang-generate")
    rec = Recorder(s)
    with pytest.raises(httpx.TimeoutException):
        guard(s.client(timeout=1), controller=rec, retry=False).chat(MODEL, messages=[{"role": "user", "content": "x"}])
    assert len(rec.calls) == 1


def test_a_refused_restart_explains_itself(launch):
    s = launch("hang-generate")
    rec = Recorder(s, deny=True)
    with pytest.raises(PermissionDenied, match="group ollamactl") as info:
        guard(s.client(timeout=1), controller=rec).generate(MODEL, "hi")
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


def test_refused_connection_counts_as_a_wedge(launch):
    s = launch()
    s.proc.kill()
    s.proc.wait()
    rec = Recorder(s, deny=True)
    with pytest.raises(PermissionDenied) as info:
        guard(s.client(timeout=1), controller=rec).list()
    assert isinstance(info.value.__cause__, (ConnectionError, httpx.ConnectError))


def test_other_errors_pass_through_untouched(launch):
    s = launch()
    rec = Recorder(s)
    with pytest.raises(ollama.ResponseError):
        guard(s.client(timeout=1), controller=rec).generate("no-such-model", "hi")
    assert rec.calls == []


def test_stream_that_fails_before_its_first_chunk_is_retried(launch):
    s = launch("hang-generate")
    rec = Recorder(s)
    chunks = list(guard(s.client(timeout=1), controller=rec).generate(MODEL, "hi", stream=True))
    assert chunks[-1]["done"] and len(rec.calls) == 1


def test_async_client(launch):
    s = launch("hang-generate")
    rec = AsyncRecorder(s)

    async def run():
        client = aguard(ollama.AsyncClient(host=s.url, timeout=1), controller=rec)
        one = await client.generate(MODEL, "hi", options={"num_predict": 1})
        s.set_mode("hang-generate")
        parts = [p async for p in await client.chat(MODEL, messages=[{"role": "user", "content": "x"}], stream=True)]
        return one, parts

    one, parts = asyncio.run(run())
    assert one["done"] and parts[-1]["done"]
    assert len(rec.calls) == 2
