"""Talking to Ollama's HTTP API, always under a total deadline.

A wedged Ollama accepts connections and then never answers, or trickles
bytes; per-socket-operation timeouts (urllib, http.client) do not bound that.
So every request here runs inside one ``asyncio.timeout`` covering connect,
send and the whole body.  Standard library only, to keep the CLI lean.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:11434"
MAX_BODY = 1 << 20  # a probe never needs more; a runaway body is an error


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
        if _is_ip(bare):
            host = str(ipaddress.ip_address(bare))
        elif hostport:
            host = hostport
    if not port.isdigit() or int(port) > 65535:
        port = default_port
    host_part = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host_part}:{port}" + (f"/{path}" if path else "")


def _is_ip(text: str) -> bool:
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


def _parse_port(text: str, default: int) -> int:
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be 1-65535 (got {text!r})")
    return int(text)


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class HTTPError(Exception):
    """The request did not get a complete HTTP answer (refused, reset, malformed)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


async def request(
    endpoint: Endpoint,
    method: str,
    path: str,
    *,
    timeout: float,
    body: Any = None,
) -> Response:
    """One HTTP/1.1 request with a total deadline; raises TimeoutError or HTTPError."""
    async with asyncio.timeout(timeout):
        return await _request(endpoint, method, path, body)


async def _request(endpoint: Endpoint, method: str, path: str, body: Any) -> Response:
    ctx = ssl.create_default_context() if endpoint.scheme == "https" else None
    try:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=ctx)
    except OSError as exc:
        refused = isinstance(exc, ConnectionRefusedError)
        raise HTTPError(f"cannot connect to {endpoint.url}: {exc.strerror or exc}", refused=refused) from exc
    try:
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
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        return await _read_response(reader)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise HTTPError(f"bad answer from {endpoint.url}: {exc}") from exc
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> Response:
    status_line = await reader.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY:
            raise ValueError(f"body of {length} bytes is too large")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise ValueError("body is too large")
    return Response(status, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"x", 16)
        if size == 0:
            await reader.readline()
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > MAX_BODY:
            raise ValueError("body is too large")


async def api_version(endpoint: Endpoint, timeout: float) -> str:
    """Ollama's version string from GET /api/version (static: answers even when wedged)."""
    resp = await request(endpoint, "GET", "/api/version", timeout=timeout)
    if resp.status != 200:
        raise HTTPError(f"GET /api/version answered HTTP {resp.status}")
    try:
        return str(resp.json()["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPError(f"GET /api/version answered something that is not Ollama: {exc}") from exc


# -- probes ----------------------------------------------------------------

HEALTHY = "healthy"
WEDGED = "wedged"  # accepts connections, no (complete) answer in time
DEEP_WEDGED = "deep-wedged"  # /api/version answers, generate does not
DOWN = "down"  # connection refused: nothing listens
STARTING = "starting"  # down or wedged, but the unit is (re)starting: decided by the caller


@dataclass
class ProbeResult:
    """One probe's outcome and how long it took."""

    outcome: str
    seconds: float
    detail: str = ""
    api_version: str | None = None


async def liveness(endpoint: Endpoint, timeout: float) -> ProbeResult:
    """GET /api/version: tells down from wedged, but is static, so misses deep wedges."""
    t0 = time.monotonic()
    try:
        version = await api_version(endpoint, timeout)
    except TimeoutError:
        return ProbeResult(WEDGED, time.monotonic() - t0, f"GET /api/version: no answer within {timeout:g}s")
    except HTTPError as exc:
        return ProbeResult(DOWN if exc.refused else WEDGED, time.monotonic() - t0, str(exc))
    return ProbeResult(HEALTHY, time.monotonic() - t0, api_version=version)


async def deep(endpoint: Endpoint, model: str, mode: str, timeout: float) -> ProbeResult:
    """POST /api/generate on ``model``: one token (mode "token") or only a load ("load").

    Raises ProbeConfigError when the model is not installed: a restart
    cannot fix that, so it must not count as a wedge.
    """
    from ollamactl.errors import ProbeConfigError

    body: dict[str, Any] = {"model": model, "stream": False}
    if mode == "token":
        body.update(prompt="ok", options={"num_predict": 1})
    else:
        body["prompt"] = ""
    t0 = time.monotonic()
    try:
        resp = await request(endpoint, "POST", "/api/generate", timeout=timeout, body=body)
    except TimeoutError:
        return ProbeResult(DEEP_WEDGED, time.monotonic() - t0, f"POST /api/generate: no answer within {timeout:g}s")
    except HTTPError as exc:
        return ProbeResult(DOWN if exc.refused else DEEP_WEDGED, time.monotonic() - t0, str(exc))
    seconds = time.monotonic() - t0
    if resp.status == 404:
        raise ProbeConfigError(
            f"deep probe: model {model!r} is not installed; set model to one that `ollama list` shows",
            key="model",
        )
    try:
        done = resp.status == 200 and bool(resp.json().get("done"))
    except (ValueError, AttributeError):
        done = False
    if not done:
        return ProbeResult(DEEP_WEDGED, seconds, f"POST /api/generate answered HTTP {resp.status}: {resp.body[:200]!r}")
    return ProbeResult(HEALTHY, seconds)
