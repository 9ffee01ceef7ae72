"""Talking to Ollama's HTTP API, always under a total deadline.

A wedged Ollama accepts connections and then never answers, or trickles
bytes; per-socket-operation timeouts (urllib, http.client) do not bound that.
So every request here runs inside one ``asyncio.timeout`` covering connect,
send and the whole body (``api_version_blocking``, for a CLI that needs no
event loop, reads the whole answer under one deadline itself).  Standard
library only, to keep the CLI lean; asyncio is imported where it is used.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ollamactl.text import clean

if TYPE_CHECKING:
    import asyncio

# Caps on what a server may send.  Ollama's answers to the probes are a few
# hundred bytes with a handful of headers; whoever listens on ``url`` (anyone,
# while Ollama is down) must not make us buffer without bound.
MAX_BODY = 1 << 20  # a probe never needs more; a runaway body is an error
MAX_LINE = 8 * 1024  # the status line, each header or trailer line, each chunk-size line
MAX_HEADERS = 100  # header (or trailer) lines per answer
MAX_HEADER_BYTES = 64 * 1024  # the status line and all header lines together
MAX_CHUNK_DIGITS = 16  # hex digits of a chunk size: 64 bits
MAX_VERSION = 64  # characters of Ollama's version string we keep
MAX_DETAIL = 300  # characters of an error detail (a server's words included) we keep
_READ_SIZE = 64 * 1024
_STATUS_RE = re.compile(rb"HTTP/1\.[0-9] ([1-9][0-9][0-9])(?:[ \t][^\r\n]*)?\r?\n")
_TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX_RE = re.compile(rb"[0-9A-Fa-f]+")
_EOL = (b"\r\n", b"\n")


@dataclass(frozen=True)
class Endpoint:
    """Where Ollama listens: scheme, host, port and an optional path prefix."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_url(text: str) -> Endpoint:
    """Parse an http(s) URL, raising ValueError that says what is wrong."""
    text = text.strip()
    if not text.isprintable() or any(ch.isspace() for ch in text):
        # it goes into the request line and Host header: no CR/LF or other controls
        raise ValueError(f"must not contain spaces or control characters (got {clean(repr(text), 120)})")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"must start with http:// or https:// (got {text!r})")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https (got {scheme!r})")
    hostport, slash, path = rest.partition("/")
    if "@" in hostport or "?" in rest or "#" in rest:
        raise ValueError("must not contain credentials, a query or a fragment")
    host, port_text = _split_hostport(hostport)
    if not host:
        raise ValueError(f"has no host (got {text!r})")
    default_port = 443 if scheme == "https" else 80
    port = _parse_port(port_text, default_port)
    path = ("/" + path).rstrip("/") if slash else ""
    return Endpoint(scheme, host, port, path)


def url_from_ollama_host(value: str | None) -> str:
    """The base URL ollama's own client uses for ``OLLAMA_HOST`` (envconfig.Host)."""
    s = (value or "").strip()
    scheme, sep, hostport = s.partition("://")
    default_port = "11434"
    if not sep:
        scheme, hostport = "http", s
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    try:
        host, port = _split_hostport(hostport, strict=True)
    except ValueError:
        host, port = "127.0.0.1", default_port
        bare = hostport.strip("[]")
        if is_ip(bare):
            host = str(ipaddress.ip_address(bare))
        elif hostport:
            host = hostport
    if not _is_port(port, lowest=0):  # as Go's envconfig.Host: 0-65535
        port = default_port
    host_part = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host_part}:{port}" + (f"/{path}" if path else "")


def server_url(value: str) -> str:
    """The URL to reach an Ollama server whose own environment has OLLAMA_HOST=``value``.

    The server reads it as its client does (envconfig.Host: default
    127.0.0.1:11434, a bare host gets 11434, ``http://host`` port 80, ``https``
    443), after envconfig.Var trims spaces and quotes; it listens there.  An
    unspecified address (0.0.0.0, ::, or none, as in ``:11500``) means every
    interface, which we reach through loopback.
    """
    url = url_from_ollama_host(value.strip().strip("\"'"))
    scheme, _, rest = url.partition("://")
    ep = parse_url(f"{scheme}://127.0.0.1{rest}" if rest.startswith(":") else url)  # ":11500": no host given
    host = ep.host
    if host in ("", "0.0.0.0") or (is_ip(host) and ipaddress.ip_address(host).is_unspecified):
        host = "::1" if ":" in host else "127.0.0.1"
    return Endpoint(ep.scheme, host, ep.port, ep.path).url


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _split_hostport(hostport: str, strict: bool = False) -> tuple[str, str]:
    """Split 'host:port' / '[v6]:port' / 'host'.  strict: a port must be present (Go's SplitHostPort)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {hostport!r}")
        host, rest = hostport[1:end], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after ']' in {hostport!r}")
        port = rest[1:]
        if strict and not rest:
            raise ValueError("missing port")
        return host, port
    if hostport.count(":") > 1:
        if strict:
            raise ValueError("too many colons")
        return hostport, ""
    host, sep, port = hostport.partition(":")
    if strict and not sep:
        raise ValueError("missing port")
    return host, port


def _is_port(text: str, lowest: int = 1) -> bool:
    """lowest-65535 in ASCII digits (str.isdigit alone accepts '²', which int() refuses)."""
    digits = text.lstrip("0") or "0"
    return text.isascii() and text.isdigit() and len(digits) <= 5 and lowest <= int(digits) <= 65535


def _parse_port(text: str, default: int) -> int:
    if not text:
        return default
    if not _is_port(text):
        raise ValueError(f"port must be 1-65535 (got {text!r})")
    return int(text.lstrip("0"))


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not (nesting too deep to parse included)."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except RecursionError:
            raise ValueError("JSON nested too deeply to parse") from None


class HTTPError(Exception):
    """The request did not get a complete, well-formed HTTP answer (refused, reset, malformed, too large)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


#: How a request reaches the server, as httpx's ``transport=``: ``(endpoint, method, path, body)``
#: -> Response, where ``body`` is JSON-able or None.  It raises HTTPError (``refused=True`` when
#: nothing listens) for anything short of a complete answer; ``request`` bounds it with the deadline.
#: The default, ``open_and_send``, speaks HTTP/1.1 over a fresh connection; tests pass in-memory ones.
Transport = Callable[[Endpoint, str, str, Any], Awaitable["Response"]]


async def request(
    endpoint: Endpoint,
    method: str,
    path: str,
    *,
    timeout: float,
    body: Any = None,
    transport: Transport | None = None,
) -> Response:
    """One HTTP/1.1 request with a total deadline; raises TimeoutError or HTTPError."""
    import asyncio  # in each function that uses it: a late detector's wait (api_version_blocking) has no loop

    async with asyncio.timeout(timeout):
        return await (transport or open_and_send)(endpoint, method, path, body)


async def open_and_send(endpoint: Endpoint, method: str, path: str, body: Any) -> Response:
    import asyncio
    import ssl

    ctx = ssl.create_default_context() if endpoint.scheme == "https" else None
    try:
        # limit: the longest line StreamReader buffers while looking for its end (see read_response)
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=ctx, limit=MAX_LINE)
    except OSError as exc:
        refused = isinstance(exc, ConnectionRefusedError)
        raise HTTPError(f"cannot connect to {endpoint.url}: {exc.strerror or exc}", refused=refused) from exc
    try:
        writer.write(_request_bytes(endpoint, method, path, body))
        await writer.drain()
        return await read_response(reader)
    except HTTPError as exc:
        raise HTTPError(f"bad answer from {endpoint.url}: {exc}") from None
    except OSError as exc:
        raise HTTPError(f"connection to {endpoint.url} failed: {exc.strerror or exc}") from exc
    finally:
        writer.close()


def _request_bytes(endpoint: Endpoint, method: str, path: str, body: Any) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    head = [
        f"{method} {endpoint.path}{path} HTTP/1.1",
        f"Host: {host}:{endpoint.port}",
        "User-Agent: ollamactl",
        "Accept: application/json",
        "Connection: close",
    ]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Parse one HTTP/1.x answer from ``reader``; raise HTTPError if it is malformed or too large.

    Strict, and capped before anything is buffered (see MAX_*), because the
    server may be hostile.  The body is framed by Transfer-Encoding: chunked, a
    Content-Length, or else the end of the connection (read to EOF, however
    many segments it comes in).  OSError from the connection passes through.
    """
    line = await _line(reader, "status line")
    m = _STATUS_RE.fullmatch(line)
    if m is None:
        raise HTTPError(f"not an HTTP status line: {line[:80]!r}")
    status = int(m.group(1))
    headers = await _fields(reader, "header", len(line))
    if "transfer-encoding" in headers:
        codings = [c.strip().lower() for v in headers["transfer-encoding"] for c in v.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise HTTPError(f"unsupported Transfer-Encoding {clean(', '.join(codings), 60)!r}")
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = _content_length(headers["content-length"])
        if length > MAX_BODY:
            raise HTTPError(f"body of {length} bytes is larger than {MAX_BODY}")
        body = await _exactly(reader, length, "body")
    else:
        body = await _read_to_eof(reader)
    return Response(status, body)


async def _line(reader: asyncio.StreamReader, what: str) -> bytes:
    """One line ending in LF, at most MAX_LINE bytes, whatever the reader's own limit."""
    try:
        line = await reader.readuntil(b"\n")
    except EOFError as exc:  # asyncio.IncompleteReadError, or the end of an answer read whole (_Whole)
        where = "inside" if getattr(exc, "partial", b"") else "before"
        raise HTTPError(f"the answer ended {where} a {what}") from None
    except (OSError, HTTPError, _NeedMore):
        raise
    except Exception as exc:
        import asyncio  # only a StreamReader has a limit of its own (open_and_send's: MAX_LINE)

        if isinstance(exc, asyncio.LimitOverrunError):
            raise HTTPError(f"a {what} is longer than {MAX_LINE} bytes") from None
        raise
    if len(line) > MAX_LINE:
        raise HTTPError(f"a {what} is longer than {MAX_LINE} bytes")
    return line


async def _exactly(reader: asyncio.StreamReader, n: int, what: str) -> bytes:
    try:
        return await reader.readexactly(n)
    except EOFError as exc:  # asyncio.IncompleteReadError, or _Whole's
        partial = getattr(exc, "partial", b"")
        raise HTTPError(f"the answer ended inside the {what} ({len(partial)} of {n} bytes)") from None


async def _fields(reader: asyncio.StreamReader, what: str, used: int) -> dict[str, list[str]]:
    """Header (or trailer) lines up to the blank line: lower-case name -> values, capped in count and bytes."""
    fields: dict[str, list[str]] = {}
    count = 0
    while True:
        line = await _line(reader, f"{what} line")
        used += len(line)
        if used > MAX_HEADER_BYTES:
            raise HTTPError(f"{what}s larger than {MAX_HEADER_BYTES} bytes")
        if line in _EOL:
            return fields
        count += 1
        if count > MAX_HEADERS:
            raise HTTPError(f"more than {MAX_HEADERS} {what}s")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise HTTPError(f"malformed {what} line {line[:80]!r}")
        fields.setdefault(name.decode("ascii").lower(), []).append(value.strip(b" \t\r\n").decode("latin-1"))


def _content_length(values: list[str]) -> int:
    """Digits only; several Content-Length values must all agree (RFC 9110 8.6)."""
    items = {v.strip() for value in values for v in value.split(",")}
    if len(items) != 1:
        raise HTTPError(f"conflicting Content-Length values {clean(', '.join(sorted(items)), 60)!r}")
    (text,) = items
    if not (text.isascii() and text.isdigit()):
        raise HTTPError(f"Content-Length is not a number: {clean(text, 30)!r}")
    if len(text) > 19:  # more than 2**63: too large, and int() of thousands of digits is slow
        raise HTTPError(f"body of more than {MAX_BODY} bytes announced")
    return int(text)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body: each size is checked against MAX_BODY before its data is read."""
    body = bytearray()
    framing = 0  # bytes of size lines and chunk ends: bounded too
    while True:
        line = await _line(reader, "chunk size line")
        framing += len(line)
        size_text = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not 0 < len(size_text) <= MAX_CHUNK_DIGITS or not _HEX_RE.fullmatch(size_text):
            raise HTTPError(f"malformed chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            await _fields(reader, "trailer", 0)
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise HTTPError(f"chunked body larger than {MAX_BODY} bytes")
        body += await _exactly(reader, size, "chunk")
        end = await _line(reader, "chunk end")
        framing += len(end)
        if end not in _EOL:
            raise HTTPError("chunk data longer than its size")
        if framing > MAX_BODY:
            raise HTTPError(f"chunk framing larger than {MAX_BODY} bytes")


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """A body framed by the end of the connection: every segment until EOF, at most MAX_BODY bytes."""
    body = bytearray()
    while chunk := await reader.read(_READ_SIZE):
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPError(f"body larger than {MAX_BODY} bytes")
    return bytes(body)


# Readiness (a restart's wait for the API): a refused connection costs a fraction of a millisecond, so
# poll every 5 ms while a server usually binds its port (the answer is then reported within a few ms of
# the first one)...
READY_POLL_FIRST = 0.005
READY_POLL_FAST_FOR = 2.0  # ...for this long...
READY_POLL_MAX = 0.25  # ...then back off to this
READY_POLL_GROWTH = 1.25


def next_ready_poll(delay: float, waited: float) -> float:
    """The pause before the next readiness poll, after ``delay`` and ``waited`` seconds of waiting in all."""
    return delay if waited <= READY_POLL_FAST_FOR else min(delay * READY_POLL_GROWTH, READY_POLL_MAX)


async def api_version(endpoint: Endpoint, timeout: float, *, transport: Transport | None = None) -> str:
    """Ollama's version string from GET /api/version (static: answers even when wedged).

    Cleaned of control characters and capped at MAX_VERSION characters: it is
    printed, and whoever answers on ``url`` chose it.
    """
    return _version(await request(endpoint, "GET", "/api/version", timeout=timeout, transport=transport))


def api_version_blocking(endpoint: Endpoint, timeout: float) -> str:
    """``api_version`` without an event loop, for a late detector's wait (late.run): no asyncio to import.

    Plain HTTP to an IP address only (else ValueError: use ``api_version``).  The
    answer is read whole, until the server closes (we send Connection: close),
    under the one deadline and capped at MAX_HEADER_BYTES + MAX_BODY; then
    ``read_response`` parses those bytes as it parses a stream.
    """
    import socket

    if endpoint.scheme != "http" or not is_ip(endpoint.host):  # no name to resolve, which no deadline bounds
        raise ValueError(f"api_version_blocking speaks plain HTTP to an IP address, not {endpoint.url}")
    end = time.monotonic() + timeout
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except TimeoutError:
        raise
    except OSError as exc:
        refused = isinstance(exc, ConnectionRefusedError)
        raise HTTPError(f"cannot connect to {endpoint.url}: {exc.strerror or exc}", refused=refused) from exc
    answer = bytearray()
    try:
        sock.sendall(_request_bytes(endpoint, "GET", "/api/version", None))
        while True:
            chunk = _recv(sock, end)
            answer += chunk
            if (resp := _parse_so_far(bytes(answer), ended=not chunk)) is not None:
                return _version(resp)
    except HTTPError as exc:
        raise HTTPError(f"bad answer from {endpoint.url}: {exc}") from None
    except TimeoutError:
        raise
    except OSError as exc:
        raise HTTPError(f"connection to {endpoint.url} failed: {exc.strerror or exc}") from exc
    finally:
        sock.close()


def _parse_so_far(answer: bytes, *, ended: bool) -> Response | None:
    """``read_response`` on the bytes received so far: the answer once complete, None if more must come."""
    parsing = read_response(_Whole(answer, ended))  # the one parser; _Whole never makes it wait
    try:
        parsing.send(None)
    except StopIteration as done:
        return done.value
    except _NeedMore:
        return None
    parsing.close()
    raise RuntimeError("read_response waited on bytes in hand")


class _Incomplete(EOFError):
    """The answer ended early (as asyncio.IncompleteReadError, which is an EOFError too)."""

    def __init__(self, partial: bytes) -> None:
        super().__init__("the answer ended early")
        self.partial = partial


class _NeedMore(Exception):
    """The bytes so far end before the answer does, and the connection is still open."""


class _Whole:
    """The bytes received so far, with the StreamReader methods ``read_response`` uses; it never waits.

    Past their end: _NeedMore while the connection is open, else what a StreamReader does at EOF.
    """

    def __init__(self, data: bytes, ended: bool) -> None:
        self._data, self._at, self._ended = data, 0, ended

    def _take(self, end: int) -> bytes:
        part, self._at = self._data[self._at : end], end
        return part

    def _short(self) -> Exception:
        return _Incomplete(self._take(len(self._data))) if self._ended else _NeedMore()

    async def readuntil(self, separator: bytes) -> bytes:
        i = self._data.find(separator, self._at)
        if i < 0:
            if len(self._data) - self._at > MAX_LINE:  # as open_and_send's StreamReader limit
                raise HTTPError(f"a line is longer than {MAX_LINE} bytes")
            raise self._short()
        return self._take(i + len(separator))

    async def readexactly(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise self._short()
        return self._take(self._at + n)

    async def read(self, n: int) -> bytes:
        if self._at >= len(self._data) and not self._ended:
            raise _NeedMore()
        return self._take(min(self._at + n, len(self._data)))


def _recv(sock: Any, end: float) -> bytes:
    """The next bytes from ``sock``, or b"" at its end; TimeoutError once ``end`` (monotonic) has passed."""
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
    return sock.recv(_READ_SIZE)


def _version(resp: Response) -> str:
    if resp.status != 200:
        raise HTTPError(f"GET /api/version answered HTTP {resp.status}")
    try:
        data = resp.json()
    except ValueError as exc:
        raise HTTPError(f"GET /api/version answered something that is not JSON: {clean(exc, 120)}") from None
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str):
        raise HTTPError("GET /api/version answered JSON without a version string: not Ollama")
    return clean(version, MAX_VERSION)


# -- probes ----------------------------------------------------------------
#
# None of these disturbs Ollama: no prompt (nothing queues behind users), no
# load, no eviction, no keep_alive.  /api/ps only reads the scheduler's table;
# a runner's /slots and /health are read-only endpoints of llama-server.

HEALTHY = "healthy"
WEDGED = "wedged"  # accepts connections, no (complete) answer in time
DOWN = "down"  # connection refused: nothing listens

# How one request went (PsResult.status, RunnerResult.slots / .health).
OK = "ok"
TIMEOUT = "timeout"  # no complete answer within the deadline
REFUSED = "refused"  # nothing listens
LOADING = "loading"  # llama-server answers 503 while it loads its model
UNSUPPORTED = "unsupported"  # 404/501: e.g. llama-server started with --no-slots
BAD = "bad"  # an answer, but not a well-formed one

MAX_MODELS = 32  # /api/ps rows we keep (OLLAMA_MAX_LOADED_MODELS is 3 per GPU)
MAX_SLOTS = 64  # /slots entries we keep (-np is OLLAMA_NUM_PARALLEL)
MAX_NAME = 200  # characters of a model name we keep
RUNNER_HOST = "127.0.0.1"  # llama-server is started with --host 127.0.0.1 (llm/llama_server.go)


@dataclass
class ProbeResult:
    """One liveness probe's outcome (HEALTHY, WEDGED or DOWN) and how long it took."""

    outcome: str
    seconds: float
    detail: str = ""
    api_version: str | None = None


async def liveness(endpoint: Endpoint, timeout: float, *, transport: Transport | None = None) -> ProbeResult:
    """GET /api/version: tells down from wedged, but is static, so misses deep wedges."""
    t0 = time.monotonic()
    try:
        version = await api_version(endpoint, timeout, transport=transport)
    except TimeoutError:
        return ProbeResult(WEDGED, time.monotonic() - t0, f"GET /api/version: no answer within {timeout:g}s")
    except HTTPError as exc:
        return ProbeResult(DOWN if exc.refused else WEDGED, time.monotonic() - t0, clean(exc, MAX_DETAIL))
    return ProbeResult(HEALTHY, time.monotonic() - t0, api_version=version)


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def model_name(name: str) -> str:
    """A model name as /api/ps shows it: "llama3" is "llama3:latest"."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


@dataclass(frozen=True)
class Loaded:
    """One model /api/ps lists as loaded."""

    name: str
    size: int
    size_vram: int
    digest: str = ""  # the sha256 of its blob (hex), as its runner's --model path names it; "" if not given


@dataclass(frozen=True)
class PsResult:
    """GET /api/ps: the loaded models, or why there is no list (it blocks during a load since v0.32.4)."""

    status: str  # OK, TIMEOUT, REFUSED or BAD
    seconds: float
    models: tuple[Loaded, ...] = ()
    detail: str = ""


async def loaded_models(endpoint: Endpoint, timeout: float, *, transport: Transport | None = None) -> PsResult:
    """GET /api/ps under a deadline; never raises for what the server does."""
    t0 = time.monotonic()
    try:
        resp = await request(endpoint, "GET", "/api/ps", timeout=timeout, transport=transport)
    except TimeoutError:
        return PsResult(TIMEOUT, time.monotonic() - t0, detail=f"GET /api/ps: no answer within {timeout:g}s")
    except HTTPError as exc:
        return PsResult(REFUSED if exc.refused else BAD, time.monotonic() - t0, detail=clean(exc, MAX_DETAIL))
    seconds = time.monotonic() - t0
    try:
        data = resp.json() if resp.status == 200 else None
    except ValueError:
        data = None
    rows = data.get("models") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return PsResult(BAD, seconds, detail=f"GET /api/ps answered HTTP {resp.status} without a model list")
    models = []
    for row in rows[:MAX_MODELS]:
        if isinstance(row, dict) and isinstance(row.get("name"), str):
            digest = row.get("digest")
            digest = digest.removeprefix("sha256:") if isinstance(digest, str) else ""
            models.append(
                Loaded(
                    clean(row["name"], MAX_NAME),
                    _count(row.get("size")),
                    _count(row.get("size_vram")),
                    digest if _SHA256_RE.fullmatch(digest) else "",
                )
            )
    return PsResult(OK, seconds, tuple(models))


@dataclass(frozen=True)
class Slot:
    """One llama-server slot: is it working on a request, and how many tokens has it made."""

    id: int
    is_processing: bool
    n_decoded: int | None  # next_token.n_decoded: rising while it generates
    id_task: int | None = None  # the slot's current (or last) task: a new one is progress too
    n_prompt_processed: int | None = None  # n_prompt_tokens_processed: rising, batch by batch, while it reads a prompt

    @property
    def progress(self) -> tuple[int | None, int | None, int | None]:
        """What moves while this slot's task makes progress; the same value twice means it did not."""
        return (self.id_task, self.n_prompt_processed, self.n_decoded)


@dataclass(frozen=True)
class RunnerResult:
    """A runner's GET /slots (answered only by its inference loop) and GET /health (its HTTP thread)."""

    port: int
    slots_status: str  # OK, TIMEOUT, REFUSED, LOADING, UNSUPPORTED or BAD
    health_status: str
    seconds: float  # how long /slots took
    slots: tuple[Slot, ...] = ()

    @property
    def alive(self) -> bool:
        """Did anything on the port answer like a llama-server would?"""
        return OK in (self.slots_status, self.health_status) or LOADING in (self.slots_status, self.health_status)


async def runner(port: int, timeout: float, *, transport: Transport | None = None) -> RunnerResult:
    """GET /slots and GET /health of the llama-server on ``port``, concurrently, each under ``timeout``."""
    import asyncio

    endpoint = Endpoint("http", RUNNER_HOST, port)
    t0 = time.monotonic()
    (slots_status, data), (health_status, _) = await asyncio.gather(
        _runner_get(endpoint, "/slots", timeout, transport), _runner_get(endpoint, "/health", timeout, transport)
    )
    seconds = time.monotonic() - t0
    slots: list[Slot] = []
    if slots_status == OK:
        if not isinstance(data, list):
            slots_status = BAD
        else:
            slots = [s for s in (_slot(item) for item in data[:MAX_SLOTS]) if s is not None]
    return RunnerResult(port, slots_status, health_status, round(seconds, 4), tuple(slots))


async def _runner_get(endpoint: Endpoint, path: str, timeout: float, transport: Transport | None) -> tuple[str, Any]:
    try:
        resp = await request(endpoint, "GET", path, timeout=timeout, transport=transport)
    except TimeoutError:
        return TIMEOUT, None
    except HTTPError as exc:
        return (REFUSED if exc.refused else BAD), None
    if resp.status == 503:  # llama-server while it loads the model: {"error": {"message": "Loading model"}}
        return LOADING, None
    if resp.status in (404, 501):  # no such endpoint, or "This server does not support slots endpoint"
        return UNSUPPORTED, None
    if resp.status != 200:
        return BAD, None
    try:
        return OK, resp.json()
    except ValueError:
        return BAD, None


def _slot(item: Any) -> Slot | None:
    if not isinstance(item, dict):
        return None
    ident = item.get("id")
    nxt = item.get("next_token")
    # llama.cpp has sent next_token as an object and, in some versions, as a one-element list
    if isinstance(nxt, list) and nxt:
        nxt = nxt[0]
    decoded = nxt.get("n_decoded") if isinstance(nxt, dict) else None
    task, prompt = item.get("id_task"), item.get("n_prompt_tokens_processed")
    return Slot(
        id=ident if _is_count(ident) else -1,
        is_processing=item.get("is_processing") is True,
        n_decoded=decoded if _is_count(decoded) else None,
        id_task=task if _is_count(task) else None,
        n_prompt_processed=prompt if _is_count(prompt) else None,
    )


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def _count(value: Any) -> int:
    return value if _is_count(value) else 0
