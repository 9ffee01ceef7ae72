"""Connecting to the system bus under a burst: a handshake the bus drops is retried, and nothing spins.

dbus-daemon drops a connection that has not authenticated within auth_timeout
(5 s) and the oldest once more than 64 are incomplete; 100 detectors starting
at once on a loaded 2-core machine meet exactly that.  These tests put a real
private dbus-daemon behind a proxy that drops the first connections mid-handshake.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollamactl.errors import BusUnavailable
from ollamactl.systemd import SystemdBus

DAEMON = shutil.which("dbus-daemon")
pytestmark = pytest.mark.skipif(DAEMON is None, reason="needs dbus-daemon (apt install dbus-daemon)")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    """A private bus daemon (session configuration) listening on a socket in tmp_path; its path."""
    path = tmp_path / "bus"
    proc = subprocess.Popen(
        [DAEMON, "--session", "--nofork", "--nopidfile", f"--address=unix:path={path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if path.exists():
                break
            time.sleep(0.01)
        yield str(path)
    finally:
        proc.terminate()
        proc.wait(5)


async def _proxy(listen: str, target: str, drops: int, accepted: list[int]) -> asyncio.Server:
    """Accept on ``listen``; close the first ``drops`` connections after the client's first bytes, relay the rest."""

    async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass  # the other side went away: the relay's job is over
        finally:
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(1)
        if len(accepted) <= drops:
            await r.read(1)  # the client's NUL byte: it is in the handshake, as when dbus-daemon drops it
            w.close()
            return
        tr, tw = await asyncio.open_unix_connection(target)
        await asyncio.gather(relay(r, tw), relay(tr, w))

    return await asyncio.start_unix_server(handle, path=listen)


def _connect(monkeypatch: pytest.MonkeyPatch, address: str, call_timeout: float) -> str:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={address}")

    async def go() -> str:
        async with SystemdBus(call_timeout=call_timeout) as bus:
            return bus._bus.unique_name  # type: ignore[union-attr]

    return asyncio.run(go())


def test_connections_dropped_during_the_handshake_are_retried(daemon: str, tmp_path: Path, monkeypatch):
    listen = str(tmp_path / "proxy")
    accepted: list[int] = []

    async def go() -> str:
        server = await _proxy(listen, daemon, drops=3, accepted=accepted)
        async with server:
            monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={listen}")
            async with SystemdBus(call_timeout=5) as bus:
                return bus._bus.unique_name  # type: ignore[union-attr]

    name = asyncio.run(go())
    assert name.startswith(":") and len(accepted) == 4  # three dropped, the fourth connected and said Hello


def test_a_bus_that_keeps_dropping_fails_within_the_deadline_without_spinning(tmp_path: Path, monkeypatch):
    listen = str(tmp_path / "proxy")
    accepted: list[int] = []

    async def go() -> None:
        server = await _proxy(listen, "/nonexistent", drops=10**6, accepted=accepted)
        async with server:
            monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={listen}")
            async with SystemdBus(call_timeout=1.0):
                pass

    raised: list[BaseException] = []

    def in_thread() -> None:
        try:
            asyncio.run(go())
        except BaseException as exc:  # handed to the test's thread below
            raised.append(exc)

    # In a thread: dbus-next's own handshake spins without ever yielding to the loop, so no deadline ends it.
    thread = threading.Thread(target=in_thread, daemon=True)
    cpu, t0 = time.process_time(), time.monotonic()
    thread.start()
    thread.join(10)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu
    assert not thread.is_alive(), "connect() did not return within 10 s (spinning on a closed socket?)"
    assert len(raised) == 1 and isinstance(raised[0], BusUnavailable), raised
    assert "kept closing the connection during the handshake" in str(raised[0])
    assert 0.5 < wall < 3 and len(accepted) >= 3
    assert cpu < wall / 2, (cpu, wall)  # dbus-next's own handshake spins at 100% CPU on a closed socket


def test_no_bus_at_all_fails_at_once(tmp_path: Path, monkeypatch):
    t0 = time.monotonic()
    with pytest.raises(BusUnavailable, match="cannot connect to the system bus"):
        _connect(monkeypatch, str(tmp_path / "absent"), call_timeout=10)
    assert time.monotonic() - t0 < 1  # no retries for a bus that is not there


def test_a_failed_connect_leaves_no_socket_open(tmp_path: Path, monkeypatch):
    import dbus_next.message_bus as upstream

    made: list[socket.socket] = []
    real = socket.socket

    class Recording(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            if "fileno" not in kwargs:  # not one asyncio wraps around an accepted connection
                made.append(self)

    monkeypatch.setattr(upstream.socket, "socket", Recording)
    listen = str(tmp_path / "proxy")

    async def go() -> None:
        server = await _proxy(listen, "/nonexistent", drops=10**6, accepted=[])
        async with server:
            monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={listen}")
            with pytest.raises(BusUnavailable):
                async with SystemdBus(call_timeout=0.5):
                    pass

    asyncio.run(go())
    with pytest.raises(BusUnavailable):
        _connect(monkeypatch, str(tmp_path / "absent"), call_timeout=1)
    open_ = [repr(s) for s in made if s.fileno() != -1]
    assert len(made) >= 3 and not open_, open_  # each attempt's socket is closed


def test_a_plain_connect_still_works(daemon: str, monkeypatch):
    assert _connect(monkeypatch, daemon, call_timeout=5).startswith(":")
