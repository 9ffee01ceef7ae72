"""The HTTP probe against real sockets: deadlines hold against servers that misbehave."""

import asyncio
import json
import socket
import sys
import time

import pytest

from ollamactl import probe


@pytest.mark.parametrize(
    ("env", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        (":8080", "http://:8080"),
        ("example.com:9", "http://example.com:9"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("[::1]:5", "http://[::1]:5"),
        ("::1", "http://[::1]:11434"),
        ("127.0.0.1:99999", "http://127.0.0.1:11434"),
        ("http://h:1/base", "http://h:1/base"),
    ],
)
def test_ollama_host_parsed_as_ollama_does(env, url):
    assert probe.url_from_ollama_host(env) == url


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "path"),
    [
        ("http://127.0.0.1:11434", "http", "127.0.0.1", 11434, ""),
        ("https://ollama.lan", "https", "ollama.lan", 443, ""),
        ("http://[::1]:8/x/", "http", "::1", 8, "/x"),
        ("HTTP://h", "http", "h", 80, ""),
    ],
)
def test_parse_url(text, scheme, host, port, path):
    ep = probe.parse_url(text)
    assert (ep.scheme, ep.host, ep.port, ep.path) == (scheme, host, port, path)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1:11434", "http://"),
        ("ftp://h", "scheme"),
        ("http://", "no host"),
        ("http://h:0", "port"),
        ("http://h:70000", "port"),
        ("http://h:x", "port"),
        ("http://u:p@h", "credentials"),
        ("http://h/?q=1", "query"),
    ],
)
def test_parse_url_rejects_with_reason(text, why):
    with pytest.raises(ValueError, match=why):
        probe.parse_url(text)


class Server:
    """A tiny real TCP server whose behaviour each test picks."""

    def __init__(self, handler):
        self.handler = handler

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handler, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.endpoint = probe.parse_url(f"http://127.0.0.1:{port}")
        return self

    async def __aexit__(self, *exc):
        self.server.close()


async def _ok(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    body = json.dumps({"version": "9.9.9"}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()


async def _chunked(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ver\r\nf\r\nsion": "1.2.3"}\r\n0\r\n\r\n'
    )
    await writer.drain()
    writer.close()


async def _silent(reader, writer):
    await asyncio.sleep(3600)


async def _trickle(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(3600):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.1)


async def _not_http(reader, writer):
    writer.write(b"SSH-2.0-OpenSSH\r\n")
    await writer.drain()
    writer.close()


def test_version_from_content_length_and_chunked_bodies():
    async def run():
        async with Server(_ok) as s1, Server(_chunked) as s2:
            return await probe.api_version(s1.endpoint, 2), await probe.api_version(s2.endpoint, 2)

    assert asyncio.run(run()) == ("9.9.9", "1.2.3")


@pytest.mark.parametrize("handler", [_silent, _trickle], ids=["accepts-never-answers", "trickles-bytes"])
def test_total_deadline_holds(handler):
    async def run():
        async with Server(handler) as s:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await probe.api_version(s.endpoint, 0.5)
            return time.monotonic() - t0

    assert asyncio.run(run()) < 1.5


def test_refused_is_an_http_error_not_a_timeout():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(probe.HTTPError, match="cannot connect"):
        asyncio.run(probe.api_version(probe.parse_url(f"http://127.0.0.1:{port}"), 2))


def test_non_http_answer_is_an_http_error():
    async def run():
        async with Server(_not_http) as s:
            await probe.api_version(s.endpoint, 2)

    with pytest.raises(probe.HTTPError):
        asyncio.run(run())


@pytest.mark.parametrize(
    "text", ["http://h/\r\nX-Injected: 1", "http://h\x00:1", "http://h :1", "http://h/\x1b[2J", "http://h:\u00b2"]
)
def test_parse_url_rejects_controls_spaces_and_odd_digits(text):
    """The URL goes into the request line and Host header: no CR/LF to inject headers, no odd digits."""
    with pytest.raises(ValueError):
        probe.parse_url(text)


def test_ollama_host_with_unicode_digits_falls_back_to_the_default_port():
    assert probe.url_from_ollama_host("h:\u1369") == "http://h:11434"


# -- the deep probe: /api/ps and a runner's /slots and /health, read-only ------------------------------


class Recorder:
    """A tiny HTTP server that answers by path and records every request line it gets."""

    def __init__(self, answers):
        self.answers = answers  # path -> (status, body) or "silent"
        self.requests = []

    async def __call__(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        answer = self.answers.get(line.split()[1], (404, b"{}"))
        if answer == "silent":
            await asyncio.sleep(3600)
        status, body = answer
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body)
        await writer.drain()
        writer.close()


SLOTS = json.dumps(
    [
        {"id": 0, "id_task": 7, "n_ctx": 4096, "is_processing": True,
         "next_token": {"has_next_token": True, "n_remain": -1, "n_decoded": 42}},
        {"id": 1, "id_task": -1, "n_ctx": 4096, "is_processing": False, "next_token": [{"n_decoded": 0}]},
        "junk",
    ]
).encode()  # fmt: skip


def runner_against(answers, timeout=2.0):
    rec = Recorder(answers)

    async def go():
        async with Server(rec) as s:
            return await probe.runner(s.endpoint.port, timeout)

    t0 = time.monotonic()
    result = asyncio.run(go())
    return result, rec, time.monotonic() - t0


def test_runner_slots_answered():
    result, rec, _ = runner_against({"/slots": (200, SLOTS), "/health": (200, b'{"status": "ok"}')})
    assert (result.slots_status, result.health_status, result.alive) == (probe.OK, probe.OK, True)
    assert result.slots == (probe.Slot(0, True, 42, id_task=7), probe.Slot(1, False, 0))
    assert sorted(rec.requests) == ["GET /health HTTP/1.1", "GET /slots HTTP/1.1"]  # read-only, nothing else


def test_runner_stuck_inference_loop_slots_silent_health_answers_within_the_deadline():
    result, _, took = runner_against({"/slots": "silent", "/health": (200, b'{"status": "ok"}')}, timeout=0.5)
    assert (result.slots_status, result.health_status) == (probe.TIMEOUT, probe.OK) and took < 1.2


@pytest.mark.parametrize(
    ("status", "expected"), [(503, probe.LOADING), (501, probe.UNSUPPORTED), (404, probe.UNSUPPORTED), (500, probe.BAD)]
)
def test_runner_statuses(status, expected):
    result, _, _ = runner_against({"/slots": (status, b"{}"), "/health": (status, b"{}")})
    assert result.slots_status == expected and result.health_status == expected


def test_runner_gone_is_refused():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = asyncio.run(probe.runner(port, 1))
    assert (result.slots_status, result.health_status, result.alive) == (probe.REFUSED, probe.REFUSED, False)


def ps_against(answer, timeout=2.0):
    rec = Recorder({"/api/ps": answer})

    async def go():
        async with Server(rec) as s:
            return await probe.loaded_models(s.endpoint, timeout)

    return asyncio.run(go()), rec


def test_api_ps_lists_the_loaded_models_and_only_reads():
    body = json.dumps({"models": [{"name": "llama3:latest", "size": 5, "size_vram": 5, "expires_at": "x"}]}).encode()
    result, rec = ps_against((200, body))
    assert result.status == probe.OK and result.models == (probe.Loaded("llama3:latest", 5, 5),)
    assert rec.requests == ["GET /api/ps HTTP/1.1"]


def test_api_ps_blocking_during_a_load_is_a_timeout_not_an_error():
    result, _ = ps_against("silent", timeout=0.3)
    assert result.status == probe.TIMEOUT and "no answer within 0.3s" in result.detail


# -- runner discovery without the journal: the kernel's listening sockets ---------------------------------

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   996        0 1 1 0 100 0 0 10 0
   1: 0100007F:9C5B 00000000:0000 0A 00000000:00000000 00:00000000 00000000   996        0 2 1 0 100 0 0 10 0
   2: 0100007F:9C5C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 100 0 0 10 0
   3: 00000000:9C5D 00000000:0000 0A 00000000:00000000 00:00000000 00000000   996        0 4 1 0 100 0 0 10 0
   4: 0100007F:9C5E 0100007F:2CAA 01 00000000:00000000 00:00000000 00000000   996        0 5 1 0 100 0 0 10 0
   5: garbage
"""


def test_runner_ports_are_the_loopback_listeners_of_ollamas_user(tmp_path):
    from ollamactl import sockets
    from ollamactl.runners import api_owner_ports

    path = tmp_path / "tcp"
    path.write_text(PROC_NET_TCP if sys.byteorder == "little" else PROC_NET_TCP.replace("0100007F", "7F000001"))
    found = sockets.listeners((str(path), str(tmp_path / "missing")))
    assert ("127.0.0.1", 11434, 996) in found and len(found) == 4
    # 40027 is alice's (uid 1000), 40029 listens on 0.0.0.0, 40030 is a connection, not a listener
    assert api_owner_ports(probe.parse_url("http://127.0.0.1:11434"), found) == [40027]
    assert api_owner_ports(probe.parse_url("http://127.0.0.1:11435"), found) == []  # nobody there: no guessing
