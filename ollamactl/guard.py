"""Recover from a wedged Ollama inside an app that uses the official ``ollama`` client.

    import ollama
    from ollamactl.guard import guard, aguard

    client = guard(ollama.Client(timeout=60))        # same methods as ollama.Client
    client.generate(model="llama3", prompt="hi")      # on a timeout or refusal: one coalesced
                                                      # restart, then the call is retried once
    aclient = aguard(ollama.AsyncClient(timeout=60))  # the asyncio twin

When a call times out or the connection is refused, the guard asks for the
coalesced restart (``observed_at`` = when the failed call started, so many
workers that hit the same wedge cause one restart) and, with ``retry=True``,
repeats the call once after Ollama answers again.  A stream is retried only
if it failed before its first chunk.  If the restart itself is refused or
fails, the OllamactlError is raised from the client's error, so the app
learns why recovery did not happen (e.g. "add yourself to group ollamactl").

Needs the optional ``ollama`` package (it brings httpx); works with ollama
0.3 (Debian 12's pydantic 1.10) and 0.4+ (pydantic 2).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ollamactl._log import log
from ollamactl.controller import AsyncController, Controller


def _wedge_errors() -> tuple[type[BaseException], ...]:
    import httpx

    # ollama >= 0.4 turns a refused connection into the builtin ConnectionError;
    # 0.3 lets httpx.ConnectError through.  Timeouts are httpx's in both.
    return (httpx.TimeoutException, httpx.ConnectError, httpx.RemoteProtocolError, ConnectionError)


class _Guard:
    def __init__(self, client: Any, retry: bool) -> None:
        self._client = client
        self._retry = retry
        self._errors = _wedge_errors()
        self.restarts: list[Any] = []  # RestartResults of the recoveries this guard asked for

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return self._wrap(name, attr)

    def _reason(self, name: str, exc: BaseException) -> str:
        return f"guard: ollama client {name}() failed: {type(exc).__name__}: {exc}"[:300]


class GuardedClient(_Guard):
    """An ``ollama.Client`` whose calls recover from a wedge; see the module docstring."""

    def __init__(self, client: Any, *, retry: bool = True, controller: Controller | None = None) -> None:
        super().__init__(client, retry)
        self._controller = controller

    def _recover(self, name: str, exc: BaseException, observed_at: float) -> None:
        ctl = self._controller = self._controller or Controller()
        log("WARNING", "ollama call failed; asking for a restart", call=name, error=type(exc).__name__)
        self.restarts.append(ctl.restart(self._reason(name, exc), observed_at=observed_at))

    def _wrap(self, name: str, method: Any) -> Any:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in (1, 2):
                started = time.time()
                try:
                    result = method(*args, **kwargs)
                    if not isinstance(result, Iterator):
                        return result
                    return self._stream(name, result, started, attempt, lambda: method(*args, **kwargs))
                except self._errors as exc:
                    self._recover_or_raise(name, exc, started)
                    if attempt == 2 or not self._retry:
                        raise
            raise AssertionError("unreachable")

        return call

    def _recover_or_raise(self, name: str, exc: BaseException, started: float) -> None:
        from ollamactl.errors import OllamactlError

        try:
            self._recover(name, exc, started)
        except OllamactlError as err:
            raise err from exc

    def _stream(self, name: str, chunks: Iterator[Any], started: float, attempt: int, again: Any) -> Iterator[Any]:
        first = True
        try:
            for chunk in chunks:
                first = False
                yield chunk
        except self._errors as exc:
            self._recover_or_raise(name, exc, started)
            if not (first and self._retry and attempt == 1):
                raise
            yield from again()


class AsyncGuardedClient(_Guard):
    """An ``ollama.AsyncClient`` whose calls recover from a wedge; see the module docstring."""

    def __init__(self, client: Any, *, retry: bool = True, controller: AsyncController | None = None) -> None:
        super().__init__(client, retry)
        self._controller = controller

    async def _recover_or_raise(self, name: str, exc: BaseException, started: float) -> None:
        from ollamactl.errors import OllamactlError

        ctl = self._controller = self._controller or AsyncController()
        log("WARNING", "ollama call failed; asking for a restart", call=name, error=type(exc).__name__)
        try:
            self.restarts.append(await ctl.restart(self._reason(name, exc), observed_at=started))
        except OllamactlError as err:
            raise err from exc

    def _wrap(self, name: str, method: Any) -> Any:
        if not inspect.iscoroutinefunction(method):
            return method

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in (1, 2):
                started = time.time()
                try:
                    result = await method(*args, **kwargs)
                    if not isinstance(result, AsyncIterator):
                        return result
                    return self._stream(name, result, started, attempt, lambda: method(*args, **kwargs))
                except self._errors as exc:
                    await self._recover_or_raise(name, exc, started)
                    if attempt == 2 or not self._retry:
                        raise
            raise AssertionError("unreachable")

        return call

    async def _stream(
        self, name: str, chunks: AsyncIterator[Any], started: float, attempt: int, again: Any
    ) -> AsyncIterator[Any]:
        first = True
        try:
            async for chunk in chunks:
                first = False
                yield chunk
        except self._errors as exc:
            await self._recover_or_raise(name, exc, started)
            if not (first and self._retry and attempt == 1):
                raise
            async for chunk in await again():
                yield chunk


def guard(client: Any, *, retry: bool = True, controller: Controller | None = None) -> GuardedClient:
    """Wrap an ``ollama.Client``; ``controller`` defaults to ``Controller()`` (config file, env)."""
    return GuardedClient(client, retry=retry, controller=controller)


def aguard(client: Any, *, retry: bool = True, controller: AsyncController | None = None) -> AsyncGuardedClient:
    """Wrap an ``ollama.AsyncClient``; ``controller`` defaults to ``AsyncController()``."""
    return AsyncGuardedClient(client, retry=retry, controller=controller)
