"""Recover from a wedged Ollama inside an app that uses the official ``ollama`` client.

    import ollama
    from ollamactl.guard import guard, aguard

    client = guard(ollama.Client(timeout=60))        # same methods as ollama.Client
    client.generate(model="llama3", prompt="hi")      # a wedge: one coalesced restart, one retry;
                                                      # slow, busy, loading or stopped: your own error
    aclient = aguard(ollama.AsyncClient(timeout=60))  # the asyncio twin

A call that times out, is refused or breaks off is not taken as proof of a
wedge: a long generation, a queue behind other users, a model load or an
admin's ``systemctl stop`` look the same from inside the client.  So the guard
first asks ollamactl's verdict (``probe(deep=True)``: one fresh verdict, the
runners' /slots read too, bounded in time) and acts on it:

- ``load-stuck`` (a call that names a model, which Ollama never starts to
  load while every loaded model sits idle: ollama #17408, which no read-only
  probe can see, so the watchdog cannot): the call's own wait is the evidence
  (verdict.LoadWait), judged only after ``load_stuck_after`` (60 s), so give
  the client a timeout at least that long; then as below.
- ``wedged`` / ``deep-wedged``: the coalesced restart (``observed_at`` = when
  the failed call started, so many workers that hit the same wedge cause one
  restart) and, with ``retry=True``, the call once more after Ollama answers
  again.  A stream is retried only if it failed before its first chunk.  If the
  restart itself is refused or fails, that OllamactlError is raised from the
  client's error, so the app learns why recovery did not happen (e.g. "add
  yourself to group ollamactl"); if the unit was stopped or failed in the
  meantime (the restart never starts it), the client's error is re-raised.
- anything else (``healthy``, ``busy``, ``loading``, ``starting``, ``stopped``,
  ``failed``, ``down``, ...): the client's own exception is re-raised,
  unchanged in type, with the verdict attached; nothing is restarted.
- no verdict (the bus is down, the probe is not allowed, it took too long):
  the client's exception is re-raised with that reason attached; the guard
  never restarts blind.

What was decided is on the exception: ``exc.ollamactl_verdict`` (the
ProbeReport, or None), ``exc.ollamactl_error`` (the OllamactlError that kept
the verdict from being obtained, or None), and a one-line note
(``add_note``) that tracebacks show.

Needs the optional ``ollama`` package (it brings httpx); works with ollama
0.3 (Debian 12's pydantic 1.10) and 0.4+ (pydantic 2).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from ollamactl._log import log
from ollamactl.config import Config
from ollamactl.controller import AsyncController, Controller
from ollamactl.errors import OllamactlError, TimedOut, UnitFailed, UnitStopped
from ollamactl.verdict import LoadWait

#: The verdicts that are evidence of a wedge (no progress); only these lead to a restart.
RESTART_ON = frozenset({"wedged", "deep-wedged", "load-stuck"})
#: The client's calls that make Ollama load their model: a failed one is a LoadWait for the verdict.
LOADING_CALLS = frozenset({"generate", "chat", "embed", "embeddings"})
#: The restart's refusals that mean "an admin's business, not a wedge": the unit is stopped or failed,
#: e.g. an admin stopped it between the verdict and the restart (which never starts it).
_ADMINS_BUSINESS = (UnitStopped, UnitFailed)


def _wedge_errors() -> tuple[type[BaseException], ...]:
    import httpx

    # ollama >= 0.4 turns a refused connection into the builtin ConnectionError;
    # 0.3 lets httpx.ConnectError through.  Timeouts are httpx's in both.
    return (httpx.TimeoutException, httpx.ConnectError, httpx.RemoteProtocolError, ConnectionError)


# -- the core both faces share: what to do after a failed call --------------------------------------
#
# ``_Guard._recover`` is a generator that yields the two things it needs done (a verdict, a restart)
# and receives their results; the sync face performs them by calling Controller, the async face by
# awaiting AsyncController.  The decision itself exists once.


@dataclass(frozen=True)
class _Verdict:
    """Effect: one probe round, deep or not, within ``timeout`` seconds."""

    deep: bool
    timeout: float
    wait: LoadWait | None = None  # the failed call's own wait for its model's load


@dataclass(frozen=True)
class _Restart:
    """Effect: the coalesced restart of a wedge seen at ``observed_at``."""

    reason: str
    observed_at: float
    verdict: str | None = None  # the outcome that called for it, and its evidence (recorded with the decision)
    evidence: str | None = None


def verdict_deadline(config: Config) -> float:
    """Seconds a fresh verdict may take at most, from the config: the guard's default bound.

    A fresh probe samples until its verdict is decided and gives up after
    deep_confirm + watch_failure_threshold x (watch_period + the slower probe +
    one HTTP request); its last sample adds a bus read and its requests.
    """
    slower = max(config.probe_timeout, config.deep_timeout)
    give_up = config.deep_confirm + config.watch_failure_threshold * (
        config.watch_period + slower + config.http_timeout
    )
    return give_up + config.bus_timeout + slower + config.http_timeout


class _Guard:
    def __init__(self, client: Any, retry: bool, controller: Any, deep: bool, verdict_timeout: float | None):
        self._client = client
        self._retry = retry
        self._controller = controller
        self._deep = deep
        self._verdict_timeout = verdict_timeout
        self._errors = _wedge_errors()
        self.restarts: list[Any] = []  # RestartResults of the recoveries this guard asked for
        self.verdicts: list[Any] = []  # every verdict this guard obtained, in order

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return self._wrap(name, attr)

    def _wrap(self, name: str, method: Any) -> Any:
        raise NotImplementedError

    def _reason(self, name: str, exc: BaseException) -> str:
        return f"guard: ollama client {name}() failed: {type(exc).__name__}: {exc}"[:300]

    def _verdict_effect(self, ctl: Any, wait: LoadWait | None) -> _Verdict:
        timeout = self._verdict_timeout
        return _Verdict(self._deep, verdict_deadline(ctl.config) if timeout is None else timeout, wait)

    def _recover(
        self, ctl: Any, name: str, exc: BaseException, started: float, model: str | None = None
    ) -> Generator[Any, Any, bool]:
        """After the client's wedge-like error ``exc``: True if Ollama was restarted (a retry may follow).

        False means "not restarted: re-raise exc" (the verdict, or why there is
        none, is attached to it by then).  A failed restart raises its
        OllamactlError from exc.
        """
        effect = self._verdict_effect(ctl, LoadWait(model, started) if model else None)
        exc.ollamactl_verdict = None  # type: ignore[attr-defined]
        exc.ollamactl_error = None  # type: ignore[attr-defined]
        try:
            verdict = yield effect
        except Exception as err:  # whatever it was, it is no evidence of a wedge
            if not isinstance(err, OllamactlError):
                log("ERROR", "guard: the verdict failed unexpectedly", call=name, error=repr(err))
            exc.ollamactl_error = err  # type: ignore[attr-defined]
            exc.add_note(f"ollamactl: no verdict ({type(err).__name__}: {err}); Ollama was not restarted")
            log("WARNING", "ollama call failed, no verdict; not restarting", call=name, error=type(err).__name__)
            return False
        self.verdicts.append(verdict)
        exc.ollamactl_verdict = verdict  # type: ignore[attr-defined]
        outcome, evidence = getattr(verdict, "outcome", "?"), getattr(verdict, "evidence", None) or ""
        said = f"ollamactl: Ollama is {outcome}" + (f" ({evidence})" if evidence else "")
        if outcome not in RESTART_ON:
            exc.add_note(f"{said}; not restarted")
            log("INFO", "ollama call failed; not a wedge, not restarting", call=name, outcome=outcome)
            return False
        log("WARNING", "ollama call failed on a wedge; asking for a restart", call=name, outcome=outcome)
        try:
            result = yield _Restart(self._reason(name, exc), started, outcome, evidence or None)
        except OllamactlError as err:
            if isinstance(err, _ADMINS_BUSINESS):  # stopped or failed since: the app gets its own error
                exc.ollamactl_error = err  # type: ignore[attr-defined]
                exc.add_note(f"{said}; not restarted: {err}")
                return False
            exc.add_note(f"{said}; the restart failed: {err}")
            raise err from exc
        self.restarts.append(result)
        exc.add_note(f"{said}; restarted ({getattr(result, 'action', result)})")
        return True


async def _adrive(gen: Generator[Any, Any, bool], perform: Callable[[Any], Awaitable[Any]]) -> bool:
    """Run the core: perform each effect it yields (``perform`` returns an awaitable), send back the result or
    the error; its return value at the end."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return bool(stop.value)
        value, error = None, None
        try:
            value = await perform(effect)
        except Exception as err:
            error = err


def _drive(gen: Generator[Any, Any, bool], perform: Callable[[Any], Any]) -> bool:
    """``_adrive`` for the sync face: ``perform`` is a plain call, so the coroutine never suspends and
    runs to its end in one step, without an event loop."""

    async def now(effect: Any) -> Any:
        return perform(effect)

    coro = _adrive(gen, now)
    try:
        coro.send(None)
    except StopIteration as stop:
        return bool(stop.value)
    coro.close()
    raise AssertionError("the guard's core suspended in the sync face")


def _model_of(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The model a client call makes Ollama load (its ``model`` argument, first positional), if it is one."""
    if name not in LOADING_CALLS:
        return None
    model = kwargs.get("model", args[0] if args else None)
    return model if isinstance(model, str) and model else None


def _again(recovered: bool, retry: bool, attempt: int, first: bool = True) -> bool:
    """Both faces: call once more after a failure?  Only after a restart, with retry on, on the first
    attempt, and for a stream only if it failed before its first chunk."""
    return recovered and retry and attempt == 1 and first


def _within(timeout: float, fn: Callable[[], Any]) -> Any:
    """fn() in a helper thread, given up on after ``timeout`` (a sync probe cannot be cancelled)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller below
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=target, name="ollamactl-verdict", daemon=True).start()
    if not done.wait(timeout):
        raise TimedOut(f"no verdict on Ollama within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class GuardedClient(_Guard):
    """An ``ollama.Client`` whose calls recover from a wedge; see the module docstring."""

    def __init__(
        self,
        client: Any,
        *,
        retry: bool = True,
        controller: Controller | None = None,
        deep: bool = True,
        verdict_timeout: float | None = None,
    ) -> None:
        super().__init__(client, retry, controller, deep, verdict_timeout)

    def _perform(self, effect: Any) -> Any:
        ctl = self._controller
        if isinstance(effect, _Verdict):
            return _within(effect.timeout, lambda: ctl.probe(deep=effect.deep, wait=effect.wait))
        return ctl.restart(
            effect.reason, observed_at=effect.observed_at, verdict=effect.verdict, evidence=effect.evidence
        )

    def _recovered(self, name: str, exc: BaseException, started: float, model: str | None = None) -> bool:
        ctl = self._controller = self._controller or Controller()
        return _drive(self._recover(ctl, name, exc, started, model), self._perform)

    def _wrap(self, name: str, method: Any) -> Any:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            model = _model_of(name, args, kwargs)
            for attempt in (1, 2):
                started = time.time()
                try:
                    result = method(*args, **kwargs)
                    if not isinstance(result, Iterator):
                        return result
                    return self._stream(name, result, started, attempt, lambda: method(*args, **kwargs), model)
                except self._errors as exc:
                    if not _again(self._recovered(name, exc, started, model), self._retry, attempt):
                        raise
            raise AssertionError("unreachable")

        return call

    def _stream(
        self, name: str, chunks: Iterator[Any], started: float, attempt: int, again: Any, model: str | None = None
    ) -> Iterator[Any]:
        first = True
        try:
            for chunk in chunks:
                first = False
                yield chunk
        except self._errors as exc:
            if not _again(self._recovered(name, exc, started, model), self._retry, attempt, first):
                raise
            yield from again()


class AsyncGuardedClient(_Guard):
    """An ``ollama.AsyncClient`` whose calls recover from a wedge; see the module docstring."""

    def __init__(
        self,
        client: Any,
        *,
        retry: bool = True,
        controller: AsyncController | None = None,
        deep: bool = True,
        verdict_timeout: float | None = None,
    ) -> None:
        super().__init__(client, retry, controller, deep, verdict_timeout)

    async def _perform(self, effect: Any) -> Any:
        ctl = self._controller
        if isinstance(effect, _Verdict):
            try:
                return await asyncio.wait_for(ctl.probe(deep=effect.deep, wait=effect.wait), effect.timeout)
            except TimeoutError:
                raise TimedOut(f"no verdict on Ollama within {effect.timeout:g}s") from None
        return await ctl.restart(
            effect.reason, observed_at=effect.observed_at, verdict=effect.verdict, evidence=effect.evidence
        )

    async def _recovered(self, name: str, exc: BaseException, started: float, model: str | None = None) -> bool:
        ctl = self._controller = self._controller or AsyncController()
        return await _adrive(self._recover(ctl, name, exc, started, model), self._perform)

    def _wrap(self, name: str, method: Any) -> Any:
        if not inspect.iscoroutinefunction(method):
            return method

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            model = _model_of(name, args, kwargs)
            for attempt in (1, 2):
                started = time.time()
                try:
                    result = await method(*args, **kwargs)
                    if not isinstance(result, AsyncIterator):
                        return result
                    return self._stream(name, result, started, attempt, lambda: method(*args, **kwargs), model)
                except self._errors as exc:
                    if not _again(await self._recovered(name, exc, started, model), self._retry, attempt):
                        raise
            raise AssertionError("unreachable")

        return call

    async def _stream(
        self, name: str, chunks: AsyncIterator[Any], started: float, attempt: int, again: Any, model: str | None = None
    ) -> AsyncIterator[Any]:
        first = True
        try:
            async for chunk in chunks:
                first = False
                yield chunk
        except self._errors as exc:
            if not _again(await self._recovered(name, exc, started, model), self._retry, attempt, first):
                raise
            async for chunk in await again():
                yield chunk


def guard(
    client: Any,
    *,
    retry: bool = True,
    controller: Controller | None = None,
    deep: bool = True,
    verdict_timeout: float | None = None,
) -> GuardedClient:
    """Wrap an ``ollama.Client``; ``controller`` defaults to ``Controller()`` (config file, env).

    deep: read the runners' /slots for the verdict (read-only; the config's deep_probe = "off" turns it
    off), without which a stuck inference loop looks healthy.
    verdict_timeout: seconds the verdict may take (default: ``verdict_deadline(config)``).
    """
    return GuardedClient(client, retry=retry, controller=controller, deep=deep, verdict_timeout=verdict_timeout)


def aguard(
    client: Any,
    *,
    retry: bool = True,
    controller: AsyncController | None = None,
    deep: bool = True,
    verdict_timeout: float | None = None,
) -> AsyncGuardedClient:
    """Wrap an ``ollama.AsyncClient``; ``controller`` defaults to ``AsyncController()``; see ``guard``."""
    return AsyncGuardedClient(client, retry=retry, controller=controller, deep=deep, verdict_timeout=verdict_timeout)
