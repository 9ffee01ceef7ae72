"""The probes against hostile servers on real local sockets, and hostile strings from the bus (issue 7).

Whoever listens on ``url`` (any local user can squat 127.0.0.1:11434 while
Ollama is down) chooses every byte of the answer.  Each test here runs a real
asyncio server on 127.0.0.1 that misbehaves one way, and asserts the probe
ends within its deadline with an HTTPError (or a timeout where the server just
stalls), without buffering what the server sends, and that nothing the server
chose reaches a terminal raw.  The last section feeds the systemd adapter
hostile bus replies and a forged signal through a fake message bus.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
import time

import pytest

from ollamactl import cli, probe
from ollamactl.systemd import UnitState

#: Control characters a terminal acts on: ESC (OSC title and clipboard, CSI), BEL, DEL, C1 CSI, bidi override.
HOSTILE_VERSION = "0.1\x1b]0;owned\x07\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x1b[31mred\x7f\x9b1m\u202eevil\ud800"
RAW = ("\x1b", "\x07", "\x7f", "\x9b", "\u202e", "\ud800")


class Server:
    """A real TCP server on 127.0.0.1 whose behaviour each test picks (same event loop as the client)."""

    def __init__(self, handler, raw: bool = False):
        self.handler = handler
        self.raw = raw  # the handler reads the request itself

    async def __aenter__(self):
        async def wrapped(reader, writer):
            try:
                if not self.raw:
                    await reader.readuntil(b"\r\n\r\n")
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client gave up on us: that is the point
            except asyncio.CancelledError:
                pass  # the test is over; returning (not raising) keeps 3.11's stream callback quiet
            finally:
                writer.close()

        self.server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.endpoint = probe.parse_url(f"http://127.0.0.1:{port}")
        return self

    async def __aexit__(self, *exc):
        self.server.close()


class ThreadedServer:
    """The same, on a loop in a thread of its own: for code that runs its own event loop (the CLI's main)."""

    def __init__(self, handler):
        self.handler = handler
        self.ready = threading.Event()

    def __enter__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = Server(self.handler, raw=True)
        self.loop.run_until_complete(self.server.__aenter__())
        self.url = self.server.endpoint.url
        self.ready.set()
        self.loop.run_forever()

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def answer(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def version_body(version: object = "1.2.3") -> bytes:
    return json.dumps({"version": version}).encode()


CLIENT = "async"  # which client run_version uses; the ``client`` fixture runs a test with each


@pytest.fixture(params=["async", "blocking"])
def client(request, monkeypatch):
    """api_version (asyncio) and api_version_blocking (a late detector's wait): one parser, the same answers."""
    monkeypatch.setattr(sys.modules[__name__], "CLIENT", request.param)
    return request.param


def run_version(handler, timeout: float = 5.0):
    """(version or the exception, seconds) of api_version against a server running ``handler``."""

    async def go():
        async with Server(handler) as s:
            t0 = time.monotonic()
            try:
                if CLIENT == "blocking":  # in a thread: the server runs on this loop
                    result = await asyncio.to_thread(probe.api_version_blocking, s.endpoint, timeout)
                else:
                    result = await probe.api_version(s.endpoint, timeout)
            except (probe.HTTPError, TimeoutError) as exc:
                result = exc
            return result, time.monotonic() - t0

    return asyncio.run(go())


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- sizes: nothing the server announces is buffered before it is checked --------------


@pytest.mark.usefixtures("client")
def test_huge_chunk_size_is_refused_before_reading_it():
    """A chunk of 7fffffffffff bytes: HTTPError at once, not hundreds of MiB read (old code: read, then timeout)."""
    block = b"x" * (1 << 20)

    async def handler(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffffffff\r\n")
        for _ in range(300):  # 300 MiB, as fast as the client reads it
            writer.write(block)
            await writer.drain()
        await asyncio.sleep(3600)

    before = maxrss_mib()
    result, seconds = run_version(handler, timeout=8)
    grown = maxrss_mib() - before
    assert isinstance(result, probe.HTTPError) and "chunk" in str(result), result
    assert seconds < 2
    assert grown < 50, f"memory grew by {grown:.0f} MiB"


@pytest.mark.usefixtures("client")
def test_chunked_body_over_the_cap_in_small_chunks():
    async def handler(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
            await writer.drain()

    result, seconds = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "larger than" in str(result)
    assert seconds < 3


@pytest.mark.parametrize(
    "size_line",
    [b"0000000000000000f\r\n", b"-f\r\n", b"0xf\r\n", b"\r\n", b"f f\r\n", b"+f\r\n", b"\xd9\xa1\xd9\xa5\r\n"],
    ids=["17-digits", "negative", "0x", "empty", "two-numbers", "plus", "unicode-digits"],
)
@pytest.mark.usefixtures("client")
def test_malformed_chunk_sizes(size_line):
    """The body is 15 (0xf) bytes: a lax parser (old code: int(x, 16)) accepts several of these."""

    async def handler(reader, writer):
        chunk = b'{"version":"1"}'
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + chunk + b"\r\n0\r\n\r\n")

    result, _ = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "chunk size" in str(result)


@pytest.mark.usefixtures("client")
def test_ten_thousand_headers():
    async def handler(reader, writer):
        headers = b"".join(b"X-H-%d: v\r\n" % i for i in range(10_000))
        body = version_body()
        writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    result, seconds = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "more than 100 headers" in str(result), result
    assert seconds < 2


@pytest.mark.usefixtures("client")
def test_header_bytes_are_capped_in_total():
    async def handler(reader, writer):
        headers = b"".join(b"X-H-%d: %s\r\n" % (i, b"v" * 4000) for i in range(50))  # 50 x 4 KiB: each line fine
        writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + version_body())
        await writer.drain()

    result, _ = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "larger than 65536 bytes" in str(result), result


@pytest.mark.usefixtures("client")
def test_one_mib_header_line():
    async def handler(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n" + version_body())
        await writer.drain()

    before = maxrss_mib()
    result, seconds = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "longer than 8192 bytes" in str(result), result
    assert seconds < 2 and maxrss_mib() - before < 50


@pytest.mark.usefixtures("client")
def test_body_without_length_over_the_cap():
    async def handler(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        while True:
            writer.write(b"z" * 65536)
            await writer.drain()

    result, seconds = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "larger than" in str(result)
    assert seconds < 3


# -- framing -----------------------------------------------------------------------


def test_body_split_across_segments_without_content_length():
    """A body framed by EOF and sent in pieces is read whole (old code: first segment only, misread)."""

    async def handler(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        for piece in (b'{"vers', b'ion": "1.', b'2.3"}'):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)

    async def go():
        async with Server(handler) as s:
            return await probe.liveness(s.endpoint, 5)

    result = asyncio.run(go())
    assert (result.outcome, result.api_version) == (probe.HEALTHY, "1.2.3"), result


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.usefixtures("client")
def test_body_split_across_segments_with_framing(framing):
    body = version_body("4.5.6")

    async def handler(reader, writer):
        if framing == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body))
            pieces = [body[:7], body[7:] + b"\r\n0", b"\r\n\r\n"]
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            pieces = [body[:7], body[7:]]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(3600)  # framed: the client must not wait for EOF

    result, seconds = run_version(handler)
    assert result == "4.5.6" and seconds < 2


@pytest.mark.usefixtures("client")
def test_content_length_longer_than_the_body_then_close():
    async def handler(reader, writer):
        writer.write(answer(b'{"version": "1"}', b"Content-Length: 100"))

    result, seconds = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "16 of 100 bytes" in str(result)
    assert seconds < 1


@pytest.mark.usefixtures("client")
def test_content_length_longer_than_the_body_held_open_ends_at_the_deadline():
    async def handler(reader, writer):
        writer.write(answer(b'{"version": "1"}', b"Content-Length: 100"))
        await writer.drain()
        await asyncio.sleep(3600)

    result, seconds = run_version(handler, timeout=0.5)
    assert isinstance(result, TimeoutError) and seconds < 1.5


@pytest.mark.usefixtures("client")
def test_content_length_shorter_than_the_body():
    async def handler(reader, writer):
        writer.write(answer(b'{"version": "1.2.3"}', b"Content-Length: 5"))

    result, _ = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "not JSON" in str(result)


@pytest.mark.parametrize(
    "headers",
    [
        (b"Content-Length: 5", b"Content-Length: 15"),
        (b"Content-Length: 5, 15",),
        (b"Content-Length: +15",),
        (b"Content-Length: 15abc",),
        (b"Content-Length: 0x0f",),
        (b"Content-Length: \xd9\xa1\xd9\xa5",),  # "15" in Arabic-Indic digits: str.isdigit() says yes
    ],
    ids=["duplicates-disagree", "list-disagrees", "plus", "junk", "hex", "unicode-digits"],
)
@pytest.mark.usefixtures("client")
def test_content_length_is_parsed_strictly(headers):
    async def handler(reader, writer):
        writer.write(answer(b'{"version":"1"}', *headers))

    result, _ = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "Content-Length" in str(result), result


@pytest.mark.usefixtures("client")
def test_agreeing_duplicate_content_lengths_are_fine():
    async def handler(reader, writer):
        writer.write(answer(b'{"version":"1"}', b"Content-Length: 15", b"content-length: 15"))

    assert run_version(handler)[0] == "1"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    ],
    ids=["no-colon", "obs-fold", "space-in-name", "four-digit-status", "gzip"],
)
@pytest.mark.usefixtures("client")
def test_malformed_heads(head):
    async def handler(reader, writer):
        writer.write(head + b'{"version":"1"}')

    result, _ = run_version(handler)
    assert isinstance(result, probe.HTTPError), result


# -- time: the total deadline holds however the server stalls ---------------------


@pytest.mark.parametrize("where", ["status-line", "headers", "chunk-size", "chunk-data", "eof-body"])
@pytest.mark.usefixtures("client")
def test_trickling_anywhere_ends_at_the_deadline(where):
    prefix = {
        "status-line": b"HTTP/1.1 200",
        "headers": b"HTTP/1.1 200 OK\r\nX-Slow: ",
        "chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "chunk-data": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffff\r\n",
        "eof-body": b"HTTP/1.1 200 OK\r\n\r\n",
    }[where]
    byte = b"0" if where == "chunk-size" else b"a"

    async def handler(reader, writer):
        writer.write(prefix)
        for _ in range(3600):
            writer.write(byte)
            await writer.drain()
            await asyncio.sleep(0.05)

    result, seconds = run_version(handler, timeout=0.5)
    assert isinstance(result, (TimeoutError, probe.HTTPError)) and seconds < 1.5, (result, seconds)


@pytest.mark.usefixtures("client")
def test_silent_server_ends_at_the_deadline():
    async def handler(reader, writer):
        await asyncio.sleep(3600)

    result, seconds = run_version(handler, timeout=0.5)
    assert isinstance(result, TimeoutError) and seconds < 1.5


# -- content: deep JSON, escape sequences ------------------------------------------

DEEP = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize("body", [DEEP, b'{"version": ' + DEEP + b"}"], ids=["top-level", "in-version"])
def test_deeply_nested_json_in_api_version(body):
    """Old code: RecursionError escaped the probe (status, doctor and the watchdog crashed)."""

    async def handler(reader, writer):
        writer.write(answer(body, b"Content-Length: %d" % len(body)))

    async def go():
        async with Server(handler) as s:
            return await probe.liveness(s.endpoint, 5)

    result = asyncio.run(go())
    assert result.outcome == probe.WEDGED and result.api_version is None
    assert "version" in result.detail


@pytest.mark.parametrize("body", [b'{"models": [{"name": "m", "x": ' + DEEP + b"}]}", DEEP], ids=["in-a-row", "top"])
def test_deeply_nested_json_in_api_ps(body):
    async def handler(reader, writer):
        writer.write(answer(body, b"Content-Length: %d" % len(body)))

    async def go():
        async with Server(handler) as s:
            return await probe.loaded_models(s.endpoint, 5)

    result = asyncio.run(go())
    assert result.status == probe.BAD and result.models == () and result.detail.isprintable()


def test_deeply_nested_json_in_a_runners_slots():
    async def handler(reader, writer):
        writer.write(answer(DEEP, b"Content-Length: %d" % len(DEEP)))

    async def go():
        async with Server(handler) as s:
            return await probe.runner(s.endpoint.port, 5)

    result = asyncio.run(go())
    assert result.slots_status == probe.BAD and result.health_status == probe.BAD and result.slots == ()


def test_escape_sequences_in_the_version_are_cleaned_in_the_probe_result():
    async def handler(reader, writer):
        writer.write(answer(version_body(HOSTILE_VERSION)))

    async def go():
        async with Server(handler) as s:
            return await probe.liveness(s.endpoint, 5)

    result = asyncio.run(go())
    assert result.outcome == probe.HEALTHY
    assert result.api_version is not None and result.api_version.isprintable()
    assert result.api_version.startswith("0.1\\x1b]0;owned\\x07")
    assert len(result.api_version) <= probe.MAX_VERSION + len("...")
    assert not any(ch in result.api_version for ch in RAW)


@pytest.mark.usefixtures("client")
def test_a_long_version_is_capped():
    async def handler(reader, writer):
        writer.write(answer(version_body("9" * 5000)))

    version, _ = run_version(handler)
    assert version == "9" * probe.MAX_VERSION + "..."


@pytest.mark.usefixtures("client")
def test_a_version_that_is_not_a_string_is_not_ollama():
    async def handler(reader, writer):
        writer.write(answer(version_body({"x": 1})))

    result, _ = run_version(handler)
    assert isinstance(result, probe.HTTPError) and "not Ollama" in str(result)


def test_model_names_and_error_answers_of_api_ps_are_cleaned():
    rows = [{"name": "\x1b]52;c;AAAA\x07m" + "x" * 5000, "size": "big", "size_vram": -1}, {"name": 7}, "junk"]
    body = json.dumps({"models": rows}).encode()

    async def ok(reader, writer):
        writer.write(answer(body))

    async def error(reader, writer):
        writer.write(answer(b'{"error": "\x1b]52;c;AAAA\x07 \xc2\x9b31m"}', status=b"500 Internal Server Error"))

    async def go(handler):
        async with Server(handler) as s:
            return await probe.loaded_models(s.endpoint, 5)

    result = asyncio.run(go(ok))
    (model,) = result.models
    assert model.name.isprintable() and len(model.name) <= probe.MAX_NAME + 3 and "\x1b" not in model.name
    assert (model.size, model.size_vram) == (0, 0)
    result = asyncio.run(go(error))
    assert result.status == probe.BAD and "HTTP 500" in result.detail and result.detail.isprintable()


# -- through the CLI: what reaches the terminal ------------------------------------


class FakeBus:
    """Stands in for the system bus in the CLI runs below; its strings are hostile too."""

    def __init__(self, active_state: str = "active") -> None:
        self.active_state = active_state

    async def unit_state(self, unit: str, timeout: float | None = None) -> UnitState:
        return UnitState(
            name=unit,
            load_state="loaded",
            active_state=self.active_state,
            sub_state="running\x1b[8m",
            result="success",
            main_pid=42,
            invocation_id="ab" * 16,
            active_enter_timestamp=1.0,
            inactive_exit_timestamp=1.0,
            n_restarts=0,
            fragment_path="/lib/systemd/system/ollama.service",
        )

    def close(self) -> None:
        pass


@pytest.fixture
def fake_bus(monkeypatch):
    from ollamactl.controller import AsyncController

    async def connect(self):
        return FakeBus()

    monkeypatch.setattr(AsyncController, "_connect", connect)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("OLLAMACTL_CONFIG", os.devnull)


async def _ollama_with_hostile_strings(reader, writer):
    """/api/version: a version full of escapes; /api/generate: not done, with escapes in the error."""
    head = await reader.readuntil(b"\r\n\r\n")
    if head.startswith(b"POST /api/generate"):
        writer.write(answer(b'{"done": false, "error": "\x1b]0;title\x07\x7f\xc2\x9b"}'))
    else:
        writer.write(answer(version_body(HOSTILE_VERSION)))


@pytest.mark.parametrize("command", [["status"], ["probe"], ["probe", "--deep", "--model", "m"]])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_output_carries_no_raw_control_characters(fake_bus, capsys, command, as_json):
    """Old code: the version's ESC ] 0; ... reached stdout raw (status text), and DEL passed through --json."""
    with ThreadedServer(_ollama_with_hostile_strings) as server:
        argv = [*command, "--url", server.url] + (["--json"] if as_json else [])
        code = cli.main(argv)
    out, err = capsys.readouterr()
    assert out and not any(ch in out + err for ch in RAW), (out, err)
    if as_json:
        assert out.count("\n") == 1
        obj = json.loads(out)
        assert obj.get("api_version", "").startswith("0.1\\x1b]0;owned")
    if command == ["status"]:
        assert code == 0 and ("Ollama 0.1\\x1b]0;owned" in out or as_json)
        assert as_json or "running\\x1b[8m" in out


def test_json_output_escapes_del_c1_and_bidi():
    line = cli.to_json({"k\x7f": "\x7f\x9b\u202e\ud800\x1b"})
    assert line.isascii() and line.isprintable()
    assert json.loads(line) == {"k\x7f": "\x7f\x9b\u202e\ud800\x1b"}


def test_the_text_printer_cleans_every_line(capsys):
    cli.emit({"x": 1}, False, lambda p: "first \x1b[2J line\nsecond\u202e line\r")
    out = capsys.readouterr().out
    assert out == "first \\x1b[2J line\nsecond\\u202e line\\x0d\n"


# -- the bus: strings from it are cleaned, signals from anyone but PID 1 ignored ------


class FakeMessageBus:
    """dbus-next's MessageBus as SystemdBus uses it: call() answers by member name."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    async def call(self, msg):
        from types import SimpleNamespace

        from dbus_next import MessageType

        self.calls.append(msg.member)
        answer = self.answers[msg.member]
        if isinstance(answer, tuple):  # (error name, message)
            return SimpleNamespace(message_type=MessageType.ERROR, error_name=answer[0], body=[answer[1]])
        return SimpleNamespace(message_type=MessageType.METHOD_RETURN, body=answer)

    def disconnect(self):
        pass


def _bus(answers):
    from ollamactl.systemd import SystemdBus

    bus = SystemdBus(call_timeout=2)
    bus._bus = FakeMessageBus(answers)
    return bus


def test_unit_state_strings_from_the_bus_are_cleaned():
    from dbus_next import Variant

    props = {
        "Id": Variant("s", "ollama.service"),
        "LoadState": Variant("s", "loaded"),
        "ActiveState": Variant("s", "active\x1b]0;owned\x07"),
        "SubState": Variant("s", "\u202erunning"),
        "Result": Variant("s", "success\x9b2J"),
        "FragmentPath": Variant("s", "/etc/systemd/system/ollama.service\x1b[8m"),
    }
    state = asyncio.run(_bus({"GetAll": [props]}).unit_state("ollama.service"))
    for value in (state.active_state, state.sub_state, state.result, state.fragment_path):
        assert value.isprintable() and not any(ch in value for ch in RAW), value
    assert state.active_state == "active\\x1b]0;owned\\x07"


def test_bus_error_messages_are_cleaned():
    from ollamactl.errors import OllamactlError

    bus = _bus({"TryRestartUnit": ("org.freedesktop.systemd1.Weird", "no \x1b]52;c;AAAA\x07 way\n\u202e")})
    with pytest.raises(OllamactlError) as info:
        asyncio.run(bus.restart_unit("ollama.service"))
    assert info.value.message.isprintable() and "no \\x1b]52;c;AAAA\\x07 way" in info.value.message


def test_primary_name_resolves_an_alias_through_load_unit():
    from dbus_next import Variant

    bus = _bus({"LoadUnit": ["/org/freedesktop/systemd1/unit/other_2eservice"], "Get": [Variant("s", "other.service")]})
    assert asyncio.run(bus.primary_name("ollama-alias.service")) == "other.service"
    assert bus._bus.calls == ["LoadUnit", "Get"]


@pytest.mark.parametrize("bad", ["other.service\n", "\x1b[2J.service", "", "x"])
def test_a_primary_name_that_is_not_a_unit_name_is_an_error(bad):
    from dbus_next import Variant

    from ollamactl.errors import OllamactlError

    bus = _bus({"LoadUnit": ["/org/freedesktop/systemd1/unit/x"], "Get": [Variant("s", bad)]})
    with pytest.raises(OllamactlError, match="not a unit name") as info:
        asyncio.run(bus.primary_name("ollama.service"))
    assert info.value.message.isprintable()


def test_job_removed_is_accepted_only_from_pid1s_connection():
    """Any local user may send us a unicast JobRemoved; only systemd's unique name may end our job."""
    from dbus_next import Message, MessageType

    from ollamactl.systemd import MANAGER, MANAGER_PATH

    job = "/org/freedesktop/systemd1/job/42"

    def signal(sender, result="done"):
        return Message(
            message_type=MessageType.SIGNAL,
            path=MANAGER_PATH,
            interface=MANAGER,
            member="JobRemoved",
            signature="uoss",
            body=[42, job, "ollama.service", result],
            sender=sender,
        )

    bus = _bus({"GetNameOwner": [":1.1"], "AddMatch": [], "Subscribe": []})
    bus._on_message(signal(":1.66"))  # before we know PID 1's name: ignored too
    asyncio.run(bus.subscribe())
    bus._on_message(signal(":1.66"))
    assert job not in bus._job_results
    bus._on_message(signal(":1.1", "done\x1b[2J"))
    assert bus._job_results[job] == "done\\x1b[2J"
