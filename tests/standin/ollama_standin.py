#!/usr/bin/python3
"""A stand-in for the Ollama HTTP server, used by ollamactl's tests.

Installed in test containers as /usr/local/bin/ollama and started by the
upstream-like unit as ``ollama serve``.  It speaks enough of Ollama 0.12.3's
HTTP API for the official ``ollama`` Python client to work against it, and it
can be told to misbehave the ways a wedged Ollama does (hang, trickle, ignore
SIGTERM, fail or be slow to start), so that ollamactl's detection and restart
logic can be tested without a GPU or a real model.

Fault modes are read from $OLLAMA_STANDIN_MODE_FILE (default
/etc/ollama-standin/mode): a comma-separated list, missing or empty = ok.

Start-time modes (read once, before binding the port):
  slow-start[=SECONDS]  sleep that long before binding (default 5)
  exit-at-start         log a message and exit with status 1 before binding
  ignore-sigterm        ignore SIGTERM; only SIGKILL ends the process
Request-time modes (the file is re-read on every request):
  silent                read each request, never answer, keep the connection
  hang-generate         /api/generate, /api/chat, /api/embed(dings) never
                        answer; /, /api/version, /api/tags, /api/ps still do
  trickle               send status line and headers, then one body byte per
                        second, forever
Process wedges (cleared by a restart, like a real wedge):
  SIGUSR1               hang-generate until this process exits
  SIGUSR2               silent until this process exits
If several request-time modes are set, silent wins over hang-generate, which
wins over trickle for the endpoints it covers.

Standard library only; runs on Python 3.11 and later.  It writes nothing but
log lines to stderr.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlsplit

VERSION = "0.12.3"
DEFAULT_MODE_FILE = "/etc/ollama-standin/mode"
DEFAULT_SLOW_START = 5.0

START_MODES = frozenset({"slow-start", "exit-at-start", "ignore-sigterm"})
REQUEST_MODES = frozenset({"silent", "hang-generate", "trickle"})
KNOWN_MODES = START_MODES | REQUEST_MODES | {"ok"}

MODEL_NAME = "standin:latest"
MODEL_SIZE = 397_821_319
MODEL_DIGEST = hashlib.sha256(b"ollamactl test stand-in model").hexdigest()
MODEL_DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "gguf",
    "family": "llama",
    "families": ["llama"],
    "parameter_size": "494.03M",
    "quantization_level": "Q4_K_M",
}
CONTEXT_LENGTH = 4096
EMBED_DIM = 16
DEFAULT_NUM_PREDICT = 8
MAX_NUM_PREDICT = 100_000
TOKEN_DELAY = 0.01  # seconds per generated token, so streaming is observable
LOAD_DELAY = 0.05  # seconds to "load" the model the first time
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default keep_alive, 5m
FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 duration, used for keep_alive < 0
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again")

GENERATE_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})

_log_lock = threading.Lock()


def log(message: str) -> None:
    """Write one line to stderr; the journal (or a test) is the only reader."""
    with _log_lock:
        try:
            sys.stderr.write(f"ollama-standin: {message}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


# --------------------------------------------------------------------------
# OLLAMA_HOST, parsed like github.com/ollama/ollama envconfig.Host() (v0.12.3)
# --------------------------------------------------------------------------


class HostSpec(NamedTuple):
    """The result of envconfig.Host(): scheme, host, port (as strings) and path."""

    scheme: str
    host: str
    port: str
    path: str = ""

    @property
    def hostport(self) -> str:
        """The ``host:port`` string Ollama passes to net.Listen."""
        return join_host_port(self.host, self.port)


class _AddrError(ValueError):
    """Go's *net.AddrError from net.SplitHostPort."""


def split_host_port(hostport: str) -> tuple[str, str]:
    """Split ``host:port`` exactly as Go's net.SplitHostPort does, or raise."""
    i = hostport.rfind(":")
    if i < 0:
        raise _AddrError("missing port in address")
    j = k = 0
    if hostport[0] == "[":
        end = hostport.find("]")
        if end < 0:
            raise _AddrError("missing ']' in address")
        if end + 1 == len(hostport):
            raise _AddrError("missing port in address")
        if end + 1 != i:
            if hostport[end + 1] == ":":
                raise _AddrError("too many colons in address")
            raise _AddrError("missing port in address")
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            raise _AddrError("too many colons in address")
    if "[" in hostport[j:]:
        raise _AddrError("unexpected '[' in address")
    if "]" in hostport[k:]:
        raise _AddrError("unexpected ']' in address")
    return host, hostport[i + 1 :]


def join_host_port(host: str, port: str) -> str:
    """Join like Go's net.JoinHostPort: bracket hosts that contain a colon."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _go_parse_ip(text: str) -> str | None:
    """Go's net.ParseIP(text).String(), or None where Go returns nil."""
    if "%" in text:  # Go's ParseIP takes no zone
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _go_port_ok(port: str) -> bool:
    """strconv.ParseInt(port, 10, 32) succeeds and 0 <= n <= 65535."""
    if not re.fullmatch(r"[+-]?[0-9]+", port):
        return False
    return 0 <= int(port) <= 65535


def parse_ollama_host(value: str | None) -> HostSpec:
    """Parse an OLLAMA_HOST value as ollama 0.12.3's envconfig.Host() does.

    Ollama binds to exactly this address, so the stand-in must too: ollamactl
    reads OLLAMA_HOST from the unit to find the server it probes.
    """
    # envconfig.Var: trim spaces, then quotes; Host() trims spaces again.
    s = (value or "").strip().strip("\"'").strip()
    default_port = "11434"
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"

    hostport, _, path = hostport.partition("/")
    try:
        host, port = split_host_port(hostport)
    except _AddrError:
        host, port = "127.0.0.1", default_port
        ip = _go_parse_ip(hostport.strip("[]"))
        if ip is not None:
            host = ip
        elif hostport != "":
            host = hostport

    if not _go_port_ok(port):
        log(f"invalid port, using default port={port!r} default={default_port}")
        port = default_port
    return HostSpec(scheme, host, port, path)


# --------------------------------------------------------------------------
# Fault modes
# --------------------------------------------------------------------------


@dataclass
class Modes:
    """The parsed mode file: mode name -> optional value (``slow-start=2``)."""

    values: dict[str, str | None] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def label(self, names: frozenset[str] | None = None) -> str:
        """Comma-joined active modes (restricted to ``names``), or ``ok``."""
        active = [n for n in self.values if n != "ok" and (names is None or n in names)]
        return ",".join(active) or "ok"


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    """Warn about a bad mode file once, not on every request that re-reads it."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log(f"warning: {message}")


def parse_modes(text: str) -> Modes:
    """Parse mode-file text: comma (or newline/space) separated ``name[=value]``.

    Unknown names are warned about and ignored (treated as ``ok``).
    """
    modes = Modes()
    for item in re.split(r"[,\n]", text):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            name, _, raw = item.partition("=")
            pairs: list[tuple[str, str | None]] = [(name.strip(), raw.strip())]
        else:
            pairs = [(word, None) for word in item.split()]
        for name, val in pairs:
            name = name.lower()
            if name not in KNOWN_MODES:
                _warn_once("mode:" + name, f"unknown mode {name!r} ignored (treated as ok)")
                continue
            modes.values[name] = val
    return modes


def read_modes(path: str) -> Modes:
    """Read the mode file; missing, empty or unreadable means ``ok``."""
    try:
        with open(path, "rb") as f:
            text = f.read(65536).decode("utf-8", "replace")
    except FileNotFoundError:
        return Modes()
    except OSError as e:
        _warn_once("read:" + path, f"cannot read mode file {path}: {e}; using ok")
        return Modes()
    return parse_modes(text)


def slow_start_seconds(modes: Modes) -> float:
    """The delay asked for by ``slow-start[=SECONDS]``, default 5."""
    raw = modes.values.get("slow-start")
    if raw is None or raw == "":
        return DEFAULT_SLOW_START
    try:
        secs = float(raw)
    except ValueError:
        secs = -1.0
    if not math.isfinite(secs) or secs < 0:
        log(f"warning: bad slow-start value {raw!r}, using {DEFAULT_SLOW_START:g}")
        return DEFAULT_SLOW_START
    return secs


# --------------------------------------------------------------------------
# Model state and API payloads
# --------------------------------------------------------------------------


def go_time(ns: int, local: bool = False) -> str:
    """Format a Unix time in ns like Go's time.Time JSON (RFC 3339, ns, trimmed)."""
    secs, frac = divmod(ns, 1_000_000_000)
    dt = datetime.fromtimestamp(secs, UTC)
    if local:
        dt = dt.astimezone()
    out = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    offset = dt.utcoffset()
    total = int(offset.total_seconds()) if offset else 0
    if total == 0:
        return out + "Z"
    sign = "+" if total > 0 else "-"
    total = abs(total)
    return out + f"{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_MODEL_RE = re.compile(r"(?:(?:registry\.ollama\.ai/)?library/)?standin(?::latest)?", re.IGNORECASE)


class ModelState:
    """Whether the one model is loaded, and until when (what /api/ps shows)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expires_ns: int | None = None
        self.modified_ns = time.time_ns()

    def loaded(self) -> int | None:
        """Expiry time in ns if loaded now, else None."""
        with self._lock:
            if self._expires_ns is not None and self._expires_ns <= time.time_ns():
                self._expires_ns = None
            return self._expires_ns

    def load(self) -> int:
        """Load the model (slowly the first time); return load duration in ns."""
        start = time.monotonic_ns()
        if self.loaded() is None:
            time.sleep(LOAD_DELAY)
        with self._lock:
            if self._expires_ns is None:
                self._expires_ns = time.time_ns() + 60 * 1_000_000_000
        return max(1, time.monotonic_ns() - start)

    def keep(self, keep_alive_ns: int) -> None:
        """Set the expiry after a request, as the scheduler does (0 = unload)."""
        with self._lock:
            if keep_alive_ns == -1:  # parse_keep_alive's "forever"
                self._expires_ns = time.time_ns() + FOREVER_NS
            elif keep_alive_ns <= 0:
                self._expires_ns = None
            else:
                self._expires_ns = time.time_ns() + keep_alive_ns

    def unload(self) -> None:
        """Drop the model, as keep_alive=0 with an empty prompt does."""
        with self._lock:
            self._expires_ns = None


def model_entry() -> dict[str, Any]:
    """The fields /api/tags and /api/ps share for standin:latest."""
    return {
        "name": MODEL_NAME,
        "model": MODEL_NAME,
        "size": MODEL_SIZE,
        "digest": MODEL_DIGEST,
        "details": dict(MODEL_DETAILS),
    }


_DURATION_RE = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def parse_keep_alive(value: Any) -> int:
    """Parse keep_alive like api.Duration: seconds or a Go duration string.

    Returns ns; -1 means forever (any negative value), 0 means unload now.
    """
    if value is None:
        return int(DEFAULT_KEEP_ALIVE * 1e9)
    if isinstance(value, bool):
        raise ApiError(400, "json: cannot unmarshal bool into Go struct field .keep_alive")
    if isinstance(value, (int, float)):
        return -1 if value < 0 else int(value * 1e9)
    if isinstance(value, str):
        text = value.strip()
        neg = text.startswith("-")
        body = text.lstrip("+-")
        if body == "0":
            return 0
        total = 0.0
        pos = 0
        for m in _DURATION_RE.finditer(body):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_NS[m.group(2)]
            pos = m.end()
        if not body or pos != len(body):
            raise ApiError(400, f'time: invalid duration "{value}"')
        return -1 if neg else int(total)
    raise ApiError(400, "json: cannot unmarshal keep_alive")


def _check_model(name: Any) -> str:
    """Resolve the requested model; unknown names are a 404 like Ollama's."""
    if not isinstance(name, str) or not _MODEL_RE.fullmatch(name):
        shown = name if isinstance(name, str) else ""
        raise ApiError(404, f"model '{shown}' not found")
    return name


def _field(body: dict[str, Any], key: str, kind: type, go_type: str) -> Any:
    """Fetch an optional request field, rejecting wrong JSON types like Go does."""
    val = body.get(key)
    if val is None:
        return None
    if isinstance(val, bool) != (kind is bool) or not isinstance(val, kind):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(val)} into Go struct field .{key} of type {go_type}")
    return val


def _json_kind(val: Any) -> str:
    """Go's name for a JSON value's kind, for unmarshal error messages."""
    if isinstance(val, bool):
        return "bool"
    if isinstance(val, (int, float)):
        return "number"
    if isinstance(val, str):
        return "string"
    if isinstance(val, list):
        return "array"
    if isinstance(val, dict):
        return "object"
    return "null"


def _num_predict(body: dict[str, Any]) -> tuple[int, bool]:
    """Return (tokens to produce, whether the limit was asked for)."""
    options = _field(body, "options", dict, "map[string]interface {}") or {}
    raw = options.get("num_predict")
    if raw is None:
        return DEFAULT_NUM_PREDICT, False
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ApiError(400, f'option "num_predict" must be of type integer, got {_json_kind(raw)}')
    n = int(raw)
    if n < 0:  # -1 infinite, -2 fill context: the stand-in stops on its own
        return DEFAULT_NUM_PREDICT, False
    return min(n, MAX_NUM_PREDICT), True


def _words(seed_text: str, n: int) -> list[str]:
    """``n`` small deterministic tokens, varied by the prompt."""
    seed = sum(seed_text.encode("utf-8")) % len(WORDS)
    return [("" if i == 0 else " ") + WORDS[(seed + i) % len(WORDS)] for i in range(n)]


def _token_ids(text: str) -> list[int]:
    """Fake token ids for a text, for ``context`` and prompt_eval_count."""
    return [1000 + int(hashlib.sha256(w.encode()).hexdigest()[:4], 16) for w in text.split()] or [1]


def _metrics(t0: int, load_ns: int, prompt_tokens: int, eval_count: int, eval_ns: int) -> dict[str, int]:
    """Timing fields as Ollama reports them (ns); zero values are omitted like Go's omitempty."""
    prompt_ns = 1_000_000 + 50_000 * prompt_tokens
    out = {
        "total_duration": max(1, time.monotonic_ns() - t0) + prompt_ns,
        "load_duration": load_ns,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_count,
        "eval_duration": max(1, eval_ns) if eval_count else 0,
    }
    return {k: v for k, v in out.items() if v}


@dataclass
class Reply:
    """An HTTP answer: a fixed body, or NDJSON objects produced over time."""

    status: int
    content_type: str
    body: bytes = b""
    stream: Iterator[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)

    def all_bytes(self) -> bytes:
        """The whole body (draining the stream if there is one)."""
        if self.stream is None:
            return self.body
        return b"".join(self.stream)


JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"


def json_reply(status: int, obj: Any) -> Reply:
    """A gin c.JSON answer."""
    return Reply(status, JSON_TYPE, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def text_reply(status: int, text: str) -> Reply:
    """A gin c.String answer."""
    return Reply(status, TEXT_TYPE, text.encode())


def _ndjson(objs: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for obj in objs:
        yield json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class Api:
    """The Ollama endpoints the stand-in implements, over one fake model."""

    def __init__(self) -> None:
        self.model = ModelState()

    # -- read-only endpoints ------------------------------------------------

    def root(self, _body: bytes) -> Reply:
        """GET / : the liveness text every Ollama answers."""
        return text_reply(200, "Ollama is running")

    def version(self, _body: bytes) -> Reply:
        """GET /api/version."""
        return json_reply(200, {"version": VERSION})

    def tags(self, _body: bytes) -> Reply:
        """GET /api/tags: the one installed model."""
        entry = model_entry()
        entry["modified_at"] = go_time(self.model.modified_ns, local=True)
        order = ["name", "model", "modified_at", "size", "digest", "details"]
        return json_reply(200, {"models": [{k: entry[k] for k in order}]})

    def ps(self, _body: bytes) -> Reply:
        """GET /api/ps: the model, once a request has loaded it."""
        expires = self.model.loaded()
        if expires is None:
            return json_reply(200, {"models": []})
        entry = model_entry()
        entry["expires_at"] = go_time(expires, local=True)
        entry["size_vram"] = 0
        entry["context_length"] = CONTEXT_LENGTH
        return json_reply(200, {"models": [entry]})

    # -- model endpoints ----------------------------------------------------

    def generate(self, raw: bytes) -> Reply:
        """POST /api/generate."""
        return self._complete(raw, chat=False)

    def chat(self, raw: bytes) -> Reply:
        """POST /api/chat."""
        return self._complete(raw, chat=True)

    def _complete(self, raw: bytes, chat: bool) -> Reply:
        t0 = time.monotonic_ns()
        body = decode_body(raw, "api.ChatRequest" if chat else "api.GenerateRequest")
        name = _check_model(body.get("model"))
        stream = _field(body, "stream", bool, "bool")
        stream = True if stream is None else stream
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        n, limited = _num_predict(body)
        if chat:
            messages = _field(body, "messages", list, "[]api.Message") or []
            texts = []
            for msg in messages:
                if not isinstance(msg, dict):
                    kind = _json_kind(msg)
                    raise ApiError(
                        400,
                        f"json: cannot unmarshal {kind} into Go struct field ChatRequest.messages of type api.Message",
                    )
                content = msg.get("content") or ""
                if not isinstance(content, str):
                    kind = _json_kind(content)
                    raise ApiError(
                        400,
                        f"json: cannot unmarshal {kind} into Go struct field Message.messages.content of type string",
                    )
                texts.append(content)
            prompt = "\n".join(texts)
            empty = not messages
        else:
            prompt = _field(body, "prompt", str, "string") or ""
            empty = prompt == ""

        def base() -> dict[str, Any]:
            return {"model": name, "created_at": go_time(time.time_ns())}

        if empty and keep_alive == 0:
            self.model.unload()
            done = base()
            if chat:
                done["message"] = {"role": "assistant", "content": ""}
            else:
                done["response"] = ""
            done.update(done=True, done_reason="unload")
            return json_reply(200, done)

        load_ns = self.model.load()
        if empty:
            self.model.keep(keep_alive)
            done = base()
            if chat:
                done["message"] = {"role": "assistant", "content": ""}
            else:
                done["response"] = ""
            done.update(done=True, done_reason="load")
            return json_reply(200, done)

        prompt_ids = _token_ids(prompt)
        words = _words(prompt, n)
        reason = "length" if limited else "stop"

        def tokens() -> Iterator[str]:
            for w in words:
                time.sleep(TOKEN_DELAY)
                yield w

        def final(text: str, eval_ns: int) -> dict[str, Any]:
            self.model.keep(keep_alive)
            done = base()
            if chat:
                done["message"] = {"role": "assistant", "content": text}
            else:
                done["response"] = text
            done.update(done=True, done_reason=reason)
            if not chat:
                done["context"] = prompt_ids + [1000 + WORDS.index(w.strip()) for w in words]
            done.update(_metrics(t0, load_ns, len(prompt_ids), len(words), eval_ns))
            return done

        def chunk(text: str) -> dict[str, Any]:
            obj = base()
            if chat:
                obj["message"] = {"role": "assistant", "content": text}
            else:
                obj["response"] = text
            obj["done"] = False
            return obj

        if not stream:
            e0 = time.monotonic_ns()
            text = "".join(tokens())
            return json_reply(200, final(text, time.monotonic_ns() - e0))

        def objects() -> Iterator[dict[str, Any]]:
            e0 = time.monotonic_ns()
            for w in tokens():
                yield chunk(w)
            yield final("", time.monotonic_ns() - e0)

        return Reply(200, NDJSON_TYPE, stream=_ndjson(objects()))

    def embed(self, raw: bytes) -> Reply:
        """POST /api/embed: one normalised vector per input string."""
        t0 = time.monotonic_ns()
        body = decode_body(raw, "api.EmbedRequest")
        inp = body.get("input")
        if isinstance(inp, str):
            inputs = [inp] if inp else []
        elif isinstance(inp, list):
            if not all(isinstance(x, str) for x in inp):
                raise ApiError(400, "invalid input type")
            inputs = list(inp)
        elif inp is None:
            inputs = []
        else:
            raise ApiError(400, "invalid input type")
        name = _check_model(body.get("model"))
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        load_ns = self.model.load()
        self.model.keep(keep_alive)
        if not inputs:
            return json_reply(200, {"model": name, "embeddings": []})
        count = sum(len(_token_ids(x)) for x in inputs)
        out: dict[str, Any] = {"model": name, "embeddings": [embedding(x) for x in inputs]}
        out["total_duration"] = max(1, time.monotonic_ns() - t0)
        out["load_duration"] = load_ns
        out["prompt_eval_count"] = count
        return json_reply(200, out)

    def embeddings(self, raw: bytes) -> Reply:
        """POST /api/embeddings: the legacy single-prompt endpoint."""
        body = decode_body(raw, "api.EmbeddingRequest")
        _check_model(body.get("model"))
        prompt = _field(body, "prompt", str, "string") or ""
        self.model.load()
        self.model.keep(parse_keep_alive(body.get("keep_alive")))
        return json_reply(200, {"embedding": embedding(prompt) if prompt else []})


def embedding(text: str) -> list[float]:
    """A deterministic unit vector for ``text`` (Ollama normalises embeddings)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    vec = [(b - 127.5) / 127.5 for b in digest[:EMBED_DIM]]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 7) for v in vec]


def decode_body(raw: bytes, go_type: str) -> dict[str, Any]:
    """Decode a JSON request body, failing with Go-like messages (400)."""
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        doc = raw.decode("utf-8", "replace")
        pos = getattr(e, "pos", 0)
        if pos >= len(doc.rstrip()):
            raise ApiError(400, "unexpected EOF") from None
        raise ApiError(400, f"invalid character {doc[pos]!r} looking for beginning of value") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(obj)} into Go value of type {go_type}")
    return obj


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------


class StandinServer(ThreadingHTTPServer):
    """A threading HTTP server on a socket that main() bound itself."""

    daemon_threads = True  # hung handlers must never keep the process alive
    block_on_close = False
    request_queue_size = 128

    def __init__(self, sock: socket.socket, mode_file: str) -> None:
        addr = sock.getsockname()
        socketserver.BaseServer.__init__(self, addr, StandinHandler)
        self.socket = sock
        self.server_name = str(addr[0])
        self.server_port = int(addr[1])
        self.mode_file = mode_file
        self.api = Api()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of a traceback: clients hang up mid-answer all the time."""
        exc = sys.exc_info()[1]
        log(f"connection from {client_address} ended: {exc!r}")


ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "root", "HEAD": "root"},
    "/api/version": {"GET": "version", "HEAD": "version"},
    "/api/tags": {"GET": "tags", "HEAD": "tags"},
    "/api/ps": {"GET": "ps"},
    "/api/generate": {"POST": "generate"},
    "/api/chat": {"POST": "chat"},
    "/api/embed": {"POST": "embed"},
    "/api/embeddings": {"POST": "embeddings"},
}


class StandinHandler(BaseHTTPRequestHandler):
    """Routes requests and applies the request-time fault modes."""

    protocol_version = "HTTP/1.1"
    server: StandinServer

    # -- plumbing -----------------------------------------------------------

    def handle_one_request(self) -> None:
        """Like the base class, but every method goes through _dispatch."""
        self._mode_label = "ok"
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._dispatch()
            self.wfile.flush()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue`` until the body is read (never in silent mode)."""
        return True

    def send_response(self, code: int, message: str | None = None) -> None:
        """Status line and Date, without Python's Server header (Go sends none)."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One line per request: method, path, status, mode."""
        del size
        self._log(str(int(code)) if isinstance(code, int) else str(code))

    def log_message(self, format: str, *args: Any) -> None:
        """Everything else the base class would log goes through our format too."""
        log(format % args)

    def log_error(self, format: str, *args: Any) -> None:
        """Errors are reported by the request line logged with their status."""

    def _log(self, status: str, note: str = "") -> None:
        method = getattr(self, "command", "") or "-"
        path = getattr(self, "path", "") or "-"
        client = join_host_port(str(self.client_address[0]), str(self.client_address[1]))
        extra = f" ({note})" if note else ""
        log(f"{method} {path} {status} mode={getattr(self, '_mode_label', 'ok')} client={client}{extra}")

    def _read_body(self) -> bytes:
        """Read a Content-Length or chunked request body."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    break
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- behaviour ----------------------------------------------------------

    def _dispatch(self) -> None:
        modes = read_modes(self.server.mode_file)
        for name in _process_modes:
            modes.values.setdefault(name, None)
        self._mode_label = modes.label(REQUEST_MODES)
        path = urlsplit(self.path).path
        if "silent" in modes:
            self._log("-", "silent: request read, never answering")
            self._hang()
            return

        methods = ROUTES.get(path)
        if methods is None:
            self._drain_body()
            self._deliver(text_reply(404, "404 page not found"), modes)
            return
        name = methods.get(self.command)
        if name is None:
            self._drain_body()
            reply = text_reply(405, "405 method not allowed")
            reply.headers.append(("Allow", ", ".join(methods)))
            self._deliver(reply, modes)
            return
        if "hang-generate" in modes and path in GENERATE_PATHS:
            self._log("-", "hang-generate: never answering")
            self._hang()
            return

        raw = self._read_body() if self.command == "POST" else b""
        try:
            reply = getattr(self.server.api, name)(raw)
        except ApiError as e:
            reply = json_reply(e.status, {"error": e.message})
        self._deliver(reply, modes)

    def _drain_body(self) -> None:
        """Consume a request body we will not use, so keep-alive stays in sync."""
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            try:
                self._read_body()
            except (ValueError, OSError):
                self.close_connection = True

    def _deliver(self, reply: Reply, modes: Modes) -> None:
        if "trickle" in modes:
            self._trickle(reply)
            return
        head = self.command == "HEAD"
        chunked = reply.stream is not None and not head
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for k, v in reply.headers:
            self.send_header(k, v)
        if chunked:
            if self.request_version == "HTTP/1.1":
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.close_connection = True
        else:
            body = reply.all_bytes()
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        if not chunked:
            self.wfile.write(body)
            return
        assert reply.stream is not None
        for data in reply.stream:
            if self.request_version == "HTTP/1.1":
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            else:
                self.wfile.write(data)
            self.wfile.flush()
        if self.request_version == "HTTP/1.1":
            self.wfile.write(b"0\r\n\r\n")

    def _trickle(self, reply: Reply) -> None:
        """Status line and headers now, then one body byte a second, forever.

        The real body comes first, then spaces; the connection is never
        closed by us, so a client waiting for the end of the body waits forever.
        """
        body = reply.all_bytes()
        self.close_connection = True
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        if self.command == "HEAD":  # a HEAD answer has no body to trickle
            self._hang()
            return
        i = 0
        while True:
            byte = body[i : i + 1] or b" "
            i += 1
            try:
                self.wfile.write(byte)
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1.0)

    def _hang(self) -> None:
        """Never answer and never close, until the client gives up.

        Whatever the client sends meanwhile is read and ignored.  When it
        closes its end the thread ends quietly, so abandoned probes do not
        pile up threads; the client never sees an answer either way.
        """
        self.close_connection = True
        sock = self.connection
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            if not poller.poll(1000):
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return


# --------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------


def bind_socket(spec: HostSpec) -> socket.socket:
    """Bind and listen where ollama would, with SO_REUSEADDR.

    Like Go's net.Listen("tcp", ...), an empty or unspecified host listens
    dual-stack on [::] when the host has IPv6, else on 0.0.0.0.
    """
    port = int(spec.port)
    host = spec.host
    ip = _go_parse_ip(host) if host else None
    candidates: list[tuple[int, tuple[Any, ...], bool]] = []
    if host == "" or ip in ("0.0.0.0", "::"):
        if socket.has_ipv6:
            candidates.append((socket.AF_INET6, ("::", port), True))
        if ip != "::":
            candidates.append((socket.AF_INET, ("0.0.0.0", port), False))
    elif ip is not None:
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        candidates.append((fam, (ip, port), False))
    else:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        infos.sort(key=lambda info: info[0] != socket.AF_INET)  # Go listens on the first IPv4
        candidates.extend((info[0], info[4], False) for info in infos[:1])

    err: OSError | None = None
    for fam, addr, dual in candidates:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(StandinServer.request_queue_size)
            return sock
        except OSError as e:
            sock.close()
            err = e
    raise err or OSError("no address to listen on")


# Wedges that live only as long as this process, like a real Ollama wedge that
# a restart clears: SIGUSR1 hangs generate, SIGUSR2 makes every request hang.
_process_modes: set[str] = set()
_WEDGE_SIGNALS = {signal.SIGUSR1: "hang-generate", signal.SIGUSR2: "silent"}


def _on_wedge_signal(signum: int, _frame: Any) -> None:
    mode = _WEDGE_SIGNALS[signal.Signals(signum)]
    _process_modes.add(mode)
    log(f"received {signal.Signals(signum).name}: {mode} until this process exits")


def _on_sigterm(signum: int, _frame: Any) -> None:
    """Exit at once: hung handler threads must not delay a stop."""
    log(f"received {signal.Signals(signum).name}, exiting")
    os._exit(0)


USAGE = "usage: ollama serve  (ollamactl test stand-in for the Ollama server)"


def main(argv: list[str] | None = None) -> int:
    """Run ``ollama serve``; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["serve"]):
        sys.stderr.write(f"Error: unknown arguments {args!r}\n{USAGE}\n")
        return 2

    mode_file = os.environ.get("OLLAMA_STANDIN_MODE_FILE") or DEFAULT_MODE_FILE
    modes = read_modes(mode_file)
    log(f"ollama {VERSION} stand-in, pid {os.getpid()}, modes: {modes.label()} (from {mode_file})")

    signal.signal(signal.SIGINT, _on_sigterm)
    for sig in _WEDGE_SIGNALS:
        signal.signal(sig, _on_wedge_signal)
    if "ignore-sigterm" in modes:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("ignore-sigterm: SIGTERM is ignored; only SIGKILL stops this process")
    else:
        signal.signal(signal.SIGTERM, _on_sigterm)

    spec = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    if "slow-start" in modes:
        delay = slow_start_seconds(modes)
        log(f"slow-start: waiting {delay:g}s before listening")
        time.sleep(delay)
    if "exit-at-start" in modes:
        log("exit-at-start: exiting with status 1 before listening")
        return 1

    try:
        sock = bind_socket(spec)
    except OSError as e:
        reason = e.strerror or str(e)
        log(f"Error: listen tcp {spec.hostport}: bind: {reason.lower()}")
        return 1
    server = StandinServer(sock, mode_file)
    bound = sock.getsockname()
    log(f"Listening on {join_host_port(str(bound[0]), str(bound[1]))} (version {VERSION})")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
