"""The HTTP probe against real sockets: deadlines hold against servers that misbehave."""

import asyncio
import json
import socket
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
