#!/usr/bin/python3
"""A stand-in for the Ollama HTTP server, used by ollamactl's tests.

Installed in test containers as /usr/local/bin/ollama and started by the
upstream-like unit as ``ollama serve``.  It speaks enough of Ollama's HTTP API
for the official ``ollama`` Python client to work against it, it schedules
requests the way Ollama's scheduler does (so that a busy or loading server looks
busy or loading, not wedged), and it can be told to misbehave the ways a
wedged Ollama does, so that ollamactl's detection and restart logic can be
tested without a GPU or a real model.  What it models, with the source it is
read from, is in /work/shared/OLLAMA.md (ollama v0.33.0-rc2: server/sched.go,
llm/llama_server.go, server/routes.go).

Scheduler (one fake llama-server "child" per loaded model, no real process,
but a real port, see "Runner children" below):
  - A request for a loaded model takes the fast path: it never queues for the
    scheduler, then waits for one of the model's OLLAMA_NUM_PARALLEL slots in
    strict FIFO order, without bound (MAX_QUEUE does not apply).  Tokens are
    produced one every STANDIN_TOKEN_SECONDS and streamed as they come.
  - A request that needs a load (model not loaded, or another num_ctx) goes to
    a pending channel of OLLAMA_MAX_QUEUE; when that is full the answer is HTTP
    503 {"error":"server busy, please try again.  maximum pending requests
    exceeded"}.  One load at a time takes STANDIN_LOAD_SECONDS; a load that
    makes no progress (mode stall-load) fails after OLLAMA_LOAD_TIMEOUT.  With
    OLLAMA_MAX_LOADED_MODELS models loaded, a load first evicts one: the idle
    one with the shortest keep-alive (ties: blob path), or waits until the
    chosen one goes idle.  A client that leaves while its request is in the
    pending channel is skipped silently: no answer, no log line.
  - Keep-alive: a model's keep-alive is OLLAMA_KEEP_ALIVE, overwritten by any
    request that carries ``keep_alive``.  ``expires_at`` in /api/ps is set only
    when the model's last in-flight request finishes (now + keep-alive); while
    the model stays busy it does not move, so it drifts into the past.  Before
    the first request finishes it reads now + keep-alive.  The model is
    unloaded when it expires; ``keep_alive: 0`` with an empty prompt unloads it
    once idle (done_reason "unload").
  - ``POST /api/generate {"model": M}`` (empty prompt) for a loaded model
    answers done_reason "load" at once, without a slot; for a model that is not
    loaded it loads it (and may evict another).  It resets the keep-alive
    timer like any request.
  - /api/ps waits while a load is in progress (STANDIN_PS_BLOCKS_DURING_LOAD,
    as since v0.32.4, #17376: it takes each runner's lock) and while an unload
    waits for a stuck child.
Runner children (llama-server, tools/server/server-context.cpp and server.cpp):
  - Each load binds a real listening socket on 127.0.0.1, port 0 (the kernel
    picks it), and logs it in the load's first line, as Ollama does:
      time=... level=INFO source=llama_server.go:433 msg="starting llama-server"
      cmd="/usr/local/lib/ollama/llama-server --model BLOB --port N --host 127.0.0.1 --no-webui --offline -c CTX -np P"
    The port is closed when the model is unloaded (expiry, keep_alive 0,
    eviction, reload with another num_ctx), when its load fails, and when the
    process exits.  A reload gets a new port.
  - Its HTTP thread answers (Content-Type application/json; charset=utf-8):
      any path during the load  503 {"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}
      GET /health               200 {"status":"ok"}, also while inference is stuck
      GET /slots                200, a JSON array, one object per slot (-np), made
                                by the main loop, so it hangs while the loop is stuck
      GET /slots?fail_on_no_slot=1   503 {"error":{"code":503,"message":"no slot available",
                                "type":"unavailable_error"}} when every slot is busy
      anything else             404 {"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}
    One slot, as server_slot::to_json(only_metrics) writes it:
      {"id":0,"n_ctx":4096,"speculative":false,"is_processing":true,"id_task":7,
       "n_prompt_tokens":12,"n_prompt_tokens_processed":2,"n_prompt_tokens_cache":0,
       "params":{"n_predict":40,"stream":true},
       "next_token":[{"has_next_token":true,"has_new_line":false,"n_remain":30,"n_decoded":10}]}
    next_token is a ONE-ELEMENT ARRAY (nlohmann's res["next_token"] = {{...}});
    a slot that never ran a task has only id, n_ctx, speculative and
    is_processing; after a task the fields stay, with is_processing false and
    has_next_token false.  id_task comes from the child's task counter, which
    /slots queries advance too.  n_decoded counts the tokens of the slot's
    current (or last) task, from 0 for each task; n_remain is n_predict minus
    n_decoded, or -1 without num_predict.  Embeddings hold a slot with
    n_decoded 0.
  - The main loop decodes one token per busy slot every STANDIN_TOKEN_SECONDS
    and answers /slots between tokens.  It stops while stuck-inference or
    stuck-child holds: no tokens; /health still 200; /slots, as the real
    llama-server's (build 11669, its main thread frozen inside a decode),
    still answers while a slot is busy, with the counters standing still,
    and with no slot busy it does not answer (the request hangs until the
    client leaves).  A stuck-child unload kills the child, which stays in D
    state: its port stays bound but answers nothing.
  - A request for a loaded model first pings its runner (needsReload's Ping,
    10 s): a runner that is gone (kill-runner) or does not answer /health
    (silent-runner) is reloaded on a new port, once no request holds it, and
    "llama-server process no longer running" is logged for a dead one.
Real runners (issue 13): where llama-server is installed
(STANDIN_LLAMA_SERVER, /usr/bin/llama-server: Debian unstable's
llama.cpp-tools), every NAME.gguf in STANDIN_GGUF_DIR (the bed's models,
tests/standin/make_gguf.py) is the pulled model NAME:latest, with its file's
size and sha256, and runs in the real llama-server, started as Ollama starts
it (--model --port --host 127.0.0.1 --no-webui --offline -c -np
--log-verbosity 4 --no-log-prefix --no-log-timestamps --flash-attn auto -b -ub,
its output into the journal); /health answers while it loads, /completion
makes the text (stall-load does not apply to it: its load is the real one).
Its wedges are done to the process: stuck-inference freezes
its main thread (freeze_thread.py, ptrace), silent-runner SIGSTOPs it,
kill-runner SIGKILLs it.
  - silent, hang-generate, trickle and SIGUSR2 wedge the server, not the
    children: their ports keep answering.  SIGUSR1 is stuck-inference.
Models: standin:latest (as before), standin2:latest, standin3:latest,
standin4:latest, all listed by /api/tags, so that eviction is observable.

Logs, as Ollama writes them (the journal keeps both streams):
  stdout: one gin access line per request, written when the request completes
          (a request that never completes never appears; a client that gives
          up on a queued or generating request produces one, status 500, or
          the status already sent if tokens were streamed):
          [GIN] 2026/08/21 - 12:00:01 | 200 |     1.234567s |       127.0.0.1 | POST     "/api/generate"
          (gin's " %13v " latency column: OLLAMA.md's sample has 2 spaces
          there, real gin pads "1.234567s" to 13 characters)
  stderr: slog lines around a load, e.g.
    time=2026-08-21T12:00:00.000Z level=INFO source=llama_server.go:1048 msg="loading model via llama-server" model=...
    time=2026-08-21T12:00:01.234Z level=INFO source=llama_server.go:1362 msg="llama-server started in 1.23 seconds"
          and "Load failed" (sched.go:641) when a load fails; plus the
          stand-in's own "ollama-standin: ..." lines (one per answered request).

Environment (Ollama's names and defaults; Go durations or whole seconds):
  OLLAMA_NUM_PARALLEL=1          slots per loaded model (0 counts as 1)
  OLLAMA_MAX_QUEUE=512           size of the pending (load) channel
  OLLAMA_MAX_LOADED_MODELS=0     0 means 3 (3 per GPU, one GPU)
  OLLAMA_KEEP_ALIVE=5m           negative = forever, 0 = unload when idle
  OLLAMA_LOAD_TIMEOUT=5m         how long a load may stall; <= 0 = forever
  OLLAMA_CONTEXT_LENGTH=0        num_ctx of a load without num_ctx (0 = 4096)
Test-only knobs:
  STANDIN_TOKEN_SECONDS=0.01     time per generated token (and per embedding input)
  STANDIN_LOAD_SECONDS=0.05      time a load takes
  STANDIN_PS_BLOCKS_DURING_LOAD=1  0: /api/ps answers during a load, without the loading model
  STANDIN_LLAMA_BATCH=512        a real runner's -b and -ub (Ollama picks 256..2048)
  STANDIN_LLAMA_THREADS=0        a real runner's -t (0: not given, llama-server's default)

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
Faithful wedges (the file is also re-read every 0.2 s):
  stuck-inference       the children's inference loops are stuck (#15950,
                        #1863, #10119): requests in flight stop producing
                        tokens and never finish, queued ones never get a slot;
                        the load-only generate of a loaded model, /,
                        /api/version, /api/tags and /api/ps still answer.  A
                        client that gives up frees its slot (a 500 gin line).
                        Each child's /health answers, its /slots hangs.
  stuck-eviction        the scheduler is stuck on an eviction (#17408): every
                        request that needs a load hangs silently (no log line,
                        no error; the pending channel fills, then 503s);
                        requests for loaded models keep answering.
  stuck-child           a child stuck in the GPU driver (D state, #2029):
                        inference is stuck as in stuck-inference; an unload
                        (expiry, eviction, keep_alive 0) never finishes and
                        holds the scheduler (/api/ps and every generate block),
                        and leaves that child's port bound but silent;
                        SIGTERM with a model loaded closes the listener and
                        hangs, so a stop takes TimeoutStopSec and only SIGKILL
                        ends the process.
  stall-load            loads make no progress and fail after
                        OLLAMA_LOAD_TIMEOUT (HTTP 500, "Load failed" logged).
  silent-runner         the runners as if SIGSTOPped (a real one is): /health
                        and /slots unanswered, no tokens; a new request waits
                        for two 10 s Pings (getRunner's and processPending's,
                        as Ollama's), then reloads the runner once no request
                        in flight holds it.
  kill-runner           each runner up when the mode is first seen dies, once:
                        its requests in flight fail ("an error was encountered
                        while running the model: unexpected EOF"), its port
                        closes; the next request reloads it on a new port.
  The whole server silent is "silent" above.
  NAME=once             (for request-time modes and wedges) latch NAME for the
                        life of the process that sees it written; a process
                        started after the file was written ignores it, so a
                        restart clears the wedge like a real one.
Process wedges (cleared by a restart, like a real wedge):
  SIGUSR1               stuck-inference until this process exits (the deep
                        wedge: /api/version answers, each child's /health
                        answers, its /slots hangs)
  SIGUSR2               silent until this process exits (the whole server)
If several request-time modes are set, silent wins over hang-generate, which
wins over trickle for the endpoints it covers.

Standard library only; runs on Python 3.11 and later.  It writes nothing but
log lines to stdout and stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import math
import os
import queue
import re
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlsplit

VERSION = "0.12.3"
DEFAULT_MODE_FILE = "/etc/ollama-standin/mode"
DEFAULT_SLOW_START = 5.0

START_MODES = frozenset({"slow-start", "exit-at-start", "ignore-sigterm"})
REQUEST_MODES = frozenset({"silent", "hang-generate", "trickle"})
WEDGE_MODES = frozenset(
    {"stuck-inference", "stuck-eviction", "stuck-child", "stall-load", "silent-runner", "kill-runner"}
)
LATCHABLE_MODES = REQUEST_MODES | WEDGE_MODES
KNOWN_MODES = START_MODES | LATCHABLE_MODES | {"ok"}

NS = 1_000_000_000
FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 duration: keep_alive < 0, or no load timeout
EMBED_DIM = 16
DEFAULT_NUM_PREDICT = 8
MAX_NUM_PREDICT = 100_000
POLL = 0.1  # how often a waiting request looks whether its client is still there
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again")
ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"  # server/sched.go ErrMaxQueue
BLOB_DIR = "/usr/share/ollama/.ollama/models/blobs"
LLAMA_SERVER = "/usr/local/lib/ollama/llama-server"
#: The real llama-server (Debian's llama.cpp-tools) and the test bed's GGUF models (issue 13).
LLAMA_SERVER_REAL = os.environ.get("STANDIN_LLAMA_SERVER", "/usr/bin/llama-server")
GGUF_DIR = os.environ.get("STANDIN_GGUF_DIR", "/var/lib/ollama-standin/gguf")
FREEZE_HELPER = os.environ.get("STANDIN_FREEZE_HELPER", "/usr/local/lib/ollama-standin/freeze_thread.py")
#: Threads each real runner computes on (llama-server -t).
LLAMA_THREADS = int(os.environ.get("STANDIN_LLAMA_THREADS", "0") or 0)  # 0: llama-server's default (all CPUs)
#: Ollama's -b/-ub (equal; 512 unless it picks 256..2048 for the hardware, server/sched.go).
LLAMA_BATCH = int(os.environ.get("STANDIN_LLAMA_BATCH", "512") or 512)
#: needsReload's Ping timeout (server/sched.go): a runner that does not answer /health in this long is reloaded.
PING_SECONDS = 10.0

GENERATE_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})

_log_lock = threading.Lock()


def _write(stream: Any, line: str) -> None:
    """One whole line, flushed at once, so the journal sees it when it happens."""
    with _log_lock:
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass


def log(message: str) -> None:
    """The stand-in's own line on stderr; the journal (or a test) is the only reader."""
    _write(sys.stderr, f"ollama-standin: {message}")


def go_quote(text: str) -> str:
    """Go's strconv.Quote, for the printable text we log (slog values, gin's %#v path)."""
    return json.dumps(text, ensure_ascii=False)


def _slog_value(value: Any) -> str:
    """A slog TextHandler value: quoted only if empty or it has spaces, '=', '"' or unprintables."""
    text = str(value)
    if text == "" or any(c in ' ="' or not c.isprintable() for c in text):
        return go_quote(text)
    return text


def _local_now() -> datetime:
    return datetime.now().astimezone()


def slog(level: str, source: str, msg: str, **attrs: Any) -> None:
    """A line as Ollama's slog text handler writes it to stderr (time, level, source, msg, attrs)."""
    now = _local_now()
    stamp = now.isoformat(timespec="milliseconds")
    if now.utcoffset() == timedelta(0):  # Go's Z07:00 writes UTC as "Z"
        stamp = stamp[: -len("+00:00")] + "Z"
    parts = [f"time={stamp}", f"level={level}", f"source={source}", f"msg={_slog_value(msg)}"]
    parts += [f"{k}={_slog_value(v)}" for k, v in attrs.items()]
    _write(sys.stderr, " ".join(parts))


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): 0s, 999ns, 50.263µs, 3.4025ms, 1.234567s, 1m1.5s, 2h0m0s."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)

    def frac(whole: int, rest: int, digits: int) -> str:
        tail = f"{rest:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if u < 1000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return sign + frac(u // 1000, u % 1000, 3) + "µs"
    if u < NS:
        return sign + frac(u // 1_000_000, u % 1_000_000, 6) + "ms"
    secs, rest = divmod(u, NS)
    out = frac(secs % 60, rest, 9) + "s"
    mins = secs // 60
    if mins:
        out = f"{mins % 60}m" + out
        if mins >= 60:
            out = f"{mins // 60}h" + out
    return sign + out


def gin_line(status: int, latency_ns: int, client_ip: str, method: str, path: str, when: datetime | None = None) -> str:
    """gin's default access-log line, uncoloured (stdout is not a terminal under systemd)."""
    when = when or _local_now()
    if latency_ns > 60 * NS:  # gin truncates latencies over a minute to whole seconds
        latency_ns -= latency_ns % NS
    return (
        f"[GIN] {when:%Y/%m/%d - %H:%M:%S} | {status:3d} | {go_duration(latency_ns):>13} | {client_ip:>15} |"
        f" {method:<7}  {go_quote(path)}"
    )


def gin(status: int, latency_ns: int, client_ip: str, method: str, path: str) -> None:
    """Write a gin access line to stdout, where gin.DefaultWriter sends it."""
    _write(sys.stdout, gin_line(status, latency_ns, client_ip, method, path))


def human_bytes(n: int) -> str:
    """format.HumanBytes2, for the "system memory" line."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


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
# Configuration, from the environment like envconfig (v0.33.0-rc2)
# --------------------------------------------------------------------------

_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": NS, "m": 60 * NS, "h": 3600 * NS}


def go_parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in ns; raises ValueError with Go's message."""
    s = text
    neg = s[:1] == "-"
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"time: invalid duration {go_quote(text)}")
    total = 0.0
    while s:
        num = re.match(r"[0-9]*(?:\.[0-9]*)?", s).group(0)  # type: ignore[union-attr]
        if num in ("", "."):
            raise ValueError(f"time: invalid duration {go_quote(text)}")
        s = s[len(num) :]
        unit = re.match(r"[^0-9.]*", s).group(0)  # type: ignore[union-attr]
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote(text)}")
        if unit not in _GO_UNITS:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(text)}")
        total += float(num) * _GO_UNITS[unit]
        s = s[len(unit) :]
    ns = min(int(round(total)), FOREVER_NS)
    return -ns if neg else ns


def env_var(environ: Mapping[str, str], key: str) -> str:
    """envconfig.Var: the value trimmed of spaces, then of quotes."""
    return (environ.get(key) or "").strip().strip("\"'")


def env_uint(environ: Mapping[str, str], key: str, default: int) -> int:
    """envconfig.Uint: a decimal unsigned integer, else a warning and the default."""
    s = env_var(environ, key)
    if not s:
        return default
    if re.fullmatch(r"[0-9]+", s) and int(s) < 2**64:
        return int(s)
    slog("WARN", "config.go:263", "invalid environment variable, using default", key=key, value=s, default=default)
    return default


def env_duration(environ: Mapping[str, str], key: str, default_ns: int) -> int:
    """envconfig.KeepAlive/LoadTimeout parsing: a Go duration, else whole seconds, else the default."""
    s = env_var(environ, key)
    if not s:
        return default_ns
    try:
        return go_parse_duration(s)
    except ValueError:
        pass
    if re.fullmatch(r"[+-]?[0-9]+", s):
        return max(-FOREVER_NS, min(int(s) * NS, FOREVER_NS))
    return default_ns


def env_seconds(environ: Mapping[str, str], key: str, default: float) -> float:
    """A STANDIN_* timing knob: seconds >= 0, else a warning and the default."""
    s = env_var(environ, key)
    if not s:
        return default
    try:
        val = float(s)
    except ValueError:
        val = -1.0
    if not math.isfinite(val) or val < 0:
        log(f"warning: bad {key}={s!r}, using {default:g}")
        return default
    return val


@dataclass(frozen=True)
class Config:
    """The scheduler's settings: Ollama's environment variables plus the stand-in's timings."""

    num_parallel: int = 1
    max_queue: int = 512
    max_loaded: int = 3
    keep_alive_ns: int = 300 * NS
    load_timeout_ns: int = 300 * NS
    num_ctx: int = 4096
    token_seconds: float = 0.01
    load_seconds: float = 0.05
    ps_blocks_during_load: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Read the variables as ollama serve does, with its defaults."""
        keep_alive = env_duration(environ, "OLLAMA_KEEP_ALIVE", 300 * NS)
        load_timeout = env_duration(environ, "OLLAMA_LOAD_TIMEOUT", 300 * NS)
        return cls(
            num_parallel=max(env_uint(environ, "OLLAMA_NUM_PARALLEL", 1), 1),
            max_queue=env_uint(environ, "OLLAMA_MAX_QUEUE", 512),
            max_loaded=env_uint(environ, "OLLAMA_MAX_LOADED_MODELS", 0) or 3,  # defaultModelsPerGPU * 1
            keep_alive_ns=FOREVER_NS if keep_alive < 0 else keep_alive,
            load_timeout_ns=FOREVER_NS if load_timeout <= 0 else load_timeout,
            num_ctx=env_uint(environ, "OLLAMA_CONTEXT_LENGTH", 0) or 4096,
            token_seconds=env_seconds(environ, "STANDIN_TOKEN_SECONDS", 0.01),
            load_seconds=env_seconds(environ, "STANDIN_LOAD_SECONDS", 0.05),
            ps_blocks_during_load=env_var(environ, "STANDIN_PS_BLOCKS_DURING_LOAD").lower()
            not in ("0", "false", "no", "off"),
        )

    def describe(self) -> str:
        """One line for the start-up log."""
        return (
            f"OLLAMA_NUM_PARALLEL={self.num_parallel} OLLAMA_MAX_QUEUE={self.max_queue}"
            f" OLLAMA_MAX_LOADED_MODELS={self.max_loaded} OLLAMA_KEEP_ALIVE={go_duration(self.keep_alive_ns)}"
            f" OLLAMA_LOAD_TIMEOUT={go_duration(self.load_timeout_ns)} OLLAMA_CONTEXT_LENGTH={self.num_ctx}"
            f" STANDIN_TOKEN_SECONDS={self.token_seconds:g} STANDIN_LOAD_SECONDS={self.load_seconds:g}"
            f" STANDIN_PS_BLOCKS_DURING_LOAD={int(self.ps_blocks_during_load)}"
        )


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


# Wedges that live only as long as this process, like a real Ollama wedge that
# a restart clears: SIGUSR1 is stuck-inference, SIGUSR2 makes every request hang.
_process_modes: set[str] = set()


class ModeFile:
    """The mode file as this process sees it, with ``NAME=once`` latched for the life of the process.

    A once-mode latches only if the file was written after this process
    started, so the process a restart brings up is healthy again.
    """

    def __init__(self, path: str, started_ns: int) -> None:
        self.path = path
        self.started_ns = started_ns
        self._lock = threading.Lock()
        self._latched: set[str] = set()
        self.snapshot = Modes()

    def current(self) -> Modes:
        """Re-read the file (each request does), latch new once-modes, add the process wedges."""
        try:
            mtime_ns = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime_ns = 0
        modes = read_modes(self.path)
        with self._lock:
            for name, val in list(modes.values.items()):
                if name in LATCHABLE_MODES and (val or "").lower() == "once":
                    del modes.values[name]
                    if mtime_ns > self.started_ns and name not in self._latched:
                        self._latched.add(name)
                        log(f"{name}=once: latched until this process exits")
            for name in sorted(self._latched | _process_modes):
                modes.values.setdefault(name, None)
            self.snapshot = modes
        return modes

    def active(self, name: str) -> bool:
        """Is ``name`` in effect now (as of the last read, at most 0.2 s old)?"""
        return name in self.snapshot

    def watch(self, period: float = 0.2) -> None:
        """Re-read the file periodically, so wedges start and latch without a request."""

        def loop() -> None:
            while True:
                self.current()
                time.sleep(period)

        threading.Thread(target=loop, name="mode-file", daemon=True).start()


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """One installed model, as /api/tags and /api/ps describe it."""

    name: str
    size: int
    seed: bytes
    parameter_size: str
    age_s: int = 0  # how long before start-up it was "pulled": /api/tags lists newest first
    gguf: str = ""  # a real model file, run in the real llama-server (RealChild); "" = simulated
    quantization: str = "Q4_K_M"

    @property
    def digest(self) -> str:
        if self.gguf:
            return self.seed.decode()  # the file's own sha256, as an Ollama blob's
        return hashlib.sha256(self.seed).hexdigest()

    @property
    def blob(self) -> str:
        """The model file's path, which the scheduler sorts eviction ties by."""
        return self.gguf or f"{BLOB_DIR}/sha256-{self.digest}"

    def entry(self) -> dict[str, Any]:
        """The fields /api/tags and /api/ps share."""
        return {
            "name": self.name,
            "model": self.name,
            "size": self.size,
            "digest": self.digest,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": self.parameter_size,
                "quantization_level": self.quantization,
            },
        }


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("standin:latest", 397_821_319, b"ollamactl test stand-in model", "494.03M"),
        ModelInfo("standin2:latest", 986_061_427, b"ollamactl test stand-in model 2", "1.54B", 3600),
        ModelInfo("standin3:latest", 2_019_393_189, b"ollamactl test stand-in model 3", "3.21B", 7200),
        ModelInfo("standin4:latest", 4_683_087_332, b"ollamactl test stand-in model 4", "7.62B", 10800),
    )
}
MODEL_NAME = "standin:latest"
_MODEL_RE = re.compile(r"(?:(?:registry\.ollama\.ai/)?library/)?([a-z0-9][a-z0-9_.-]*)(?::latest)?", re.IGNORECASE)


def real_models(gguf_dir: str = GGUF_DIR, server: str = LLAMA_SERVER_REAL) -> list[ModelInfo]:
    """The test bed's GGUF models, as pulled models NAME:latest, where the real llama-server is installed.

    The digest is the file's sha256, as an Ollama blob's; the size is the file's; the parameter
    count is the f32 weights' (4 bytes each).  None where the release has no llama-server.
    """
    if not os.access(server, os.X_OK):
        return []
    try:
        names = sorted(n for n in os.listdir(gguf_dir) if n.endswith(".gguf"))
    except OSError:
        return []
    out = []
    for n in names:
        path = os.path.join(gguf_dir, n)
        try:  # written beside it by make_gguf.py: hashing 100 MB would slow every start
            with open(path[:-5] + ".sha256") as f:
                digest = f.read(64)
        except OSError:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digest = h.hexdigest()
        size = os.path.getsize(path)
        params = size / 4
        label = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.2f}M"
        out.append(ModelInfo(f"{n[:-5]}:latest", size, digest.encode(), label, 60, gguf=path, quantization="F32"))
    return out


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def resolve_model(name: Any) -> ModelInfo:
    """The installed model a request names; unknown names are a 404 like Ollama's."""
    m = _MODEL_RE.fullmatch(name) if isinstance(name, str) else None
    found = MODELS.get(m.group(1).lower() + ":latest") if m is not None else None
    if found is None:
        shown = name if isinstance(name, str) else ""
        raise ApiError(404, f"model '{shown}' not found")
    return found


# --------------------------------------------------------------------------
# The scheduler (server/sched.go) and the children's slots (llm/llama_server.go)
# --------------------------------------------------------------------------


class RunnerDied(Exception):
    """The runner process exited under a request (Ollama: "llama runner process has terminated")."""


def kill_runner_due(ready_at: float) -> bool:
    """kill-runner kills the runners that were up when the mode was first seen, once; later loads live."""
    with _kill_lock:
        seen = _kill_seen.setdefault("at", time.monotonic())
    return ready_at < seen


_kill_seen: dict[str, float] = {}
_kill_lock = threading.Lock()


class ClientGone(Exception):
    """The client closed its connection: the Go request context is cancelled."""


class Abandoned(Exception):
    """A request Ollama never answers and never logs (skipped in the pending channel)."""


class RequestCtx:
    """What a Go handler learns from its request context: has the client gone away?"""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock
        self._gone = False
        self.on_done: list[Callable[[], None]] = []  # run after the gin line, like ctx.Done() watchers

    def gone(self) -> bool:
        """True once the peer has closed or reset the connection (a peek, reads nothing)."""
        if self._gone or self._sock is None:
            return self._gone
        try:
            poller = select.poll()
            poller.register(self._sock, select.POLLIN | select.POLLHUP | select.POLLERR)
            events = poller.poll(0)
            if events:
                if events[0][1] & (select.POLLHUP | select.POLLERR):
                    self._gone = True
                elif not self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    self._gone = True
        except BlockingIOError:
            pass
        except (OSError, ValueError):
            self._gone = True
        return self._gone


class FifoSemaphore:
    """golang.org/x/sync/semaphore.Weighted with weight 1: first come, first served, no bound."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._free = size
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, ctx: RequestCtx) -> None:
        """Wait for a slot in arrival order; raise ClientGone if the client leaves first."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            ready = threading.Event()
            self._waiters.append(ready)
        while not ready.wait(POLL):
            if ctx.gone():
                with self._lock:
                    if ready.is_set():  # granted meanwhile: give it back, as Weighted does
                        self._free += 1
                    else:
                        self._waiters.remove(ready)
                    self._grant()
                raise ClientGone

    def release(self) -> None:
        """Free a slot; the longest waiter gets it."""
        with self._lock:
            self._free += 1
            self._grant()

    def _grant(self) -> None:
        while self._free > 0 and self._waiters:
            self._free -= 1
            self._waiters.popleft().set()

    def waiting(self) -> int:
        """Requests queued for a slot now."""
        with self._lock:
            return len(self._waiters)


# --------------------------------------------------------------------------
# The runner child: a fake llama-server with a real HTTP port (tools/server)
# --------------------------------------------------------------------------

LLAMA_JSON_TYPE = "application/json; charset=utf-8"


def _compact(obj: Any) -> bytes:
    """nlohmann::json::dump(): no spaces."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def llama_error(code: int, message: str, kind: str) -> bytes:
    """res_error(format_error_response(...)): the body llama-server sends with an error status."""
    return _compact({"error": {"code": code, "message": message, "type": kind}})


def wait_for_peer_close(sock: socket.socket) -> None:
    """Never answer: read and drop whatever the peer sends until it closes its end."""
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


@dataclass(eq=False)
class SlotTask:
    """One completion (or embedding) task for a slot: server_task, as the main loop sees it."""

    id: int
    n_steps: int  # tokens to decode (or inputs to embed)
    n_predict: int  # the request's limit, -1 without one
    n_prompt: int
    embedding: bool
    produced: int = 0
    cancelled: bool = False
    finished: bool = False


@dataclass
class SlotState:
    """server_slot: what /slots shows for one of the child's -np slots."""

    id: int
    n_ctx: int
    task: SlotTask | None = None
    task_prev: SlotTask | None = None
    n_decoded: int = 0
    n_remain: int = -1
    has_next_token: bool = True
    due: float = 0.0  # when the main loop decodes this slot's next token

    def to_json(self) -> dict[str, Any]:
        """server_slot::to_json(only_metrics=true), as GET /slots sends it (tools/server/server-context.cpp)."""
        out: dict[str, Any] = {"id": self.id, "n_ctx": self.n_ctx, "speculative": False}
        out["is_processing"] = self.task is not None
        ptask = self.task or self.task_prev
        if ptask is not None:  # a slot that never ran a task has neither id_task nor next_token
            out["id_task"] = ptask.id
            out["n_prompt_tokens"] = ptask.n_prompt + self.n_decoded
            out["n_prompt_tokens_processed"] = ptask.n_prompt
            out["n_prompt_tokens_cache"] = 0
            out["params"] = {"n_predict": ptask.n_predict, "stream": True}
            # nlohmann's res["next_token"] = {{...}} makes a one-element array, not an object
            out["next_token"] = [
                {
                    "has_next_token": self.has_next_token,
                    "has_new_line": False,
                    "n_remain": self.n_remain,
                    "n_decoded": self.n_decoded,
                }
            ]
        return out


@dataclass(eq=False)
class SlotsQuery:
    """A GET /slots waiting for the main loop (a SERVER_TASK_TYPE_METRICS task)."""

    id: int
    result: tuple[list[dict[str, Any]], int] | None = None  # (slots, idle slots)


class Child:
    """One loaded model's llama-server child: a real listening port, an HTTP thread, and a main loop.

    There is no process.  The port is bound on 127.0.0.1 (port 0, so the
    kernel picks it) when the load starts, and that port goes into the
    "starting llama-server" line's ``--port``.  The HTTP side answers
    ``/health`` itself (503 "Loading model" during the load, then 200
    ``{"status":"ok"}`` always, also while inference is stuck).  ``/slots``
    and every token of every generation go through the main loop, which
    stops dead while ``stuck()`` holds (stuck-inference, stuck-child): then
    ``/slots`` hangs until its client gives up, like the real one that waits
    for a metrics task the loop never takes.  close() (unload, eviction,
    failed load) closes the port and every connection; hold() is a child
    killed in D state: the port stays bound but nothing answers again.
    """

    def __init__(
        self,
        n_ctx: int,
        num_parallel: int,
        token_seconds: float,
        stuck: Callable[[], bool],
        active: Callable[[str], bool] = lambda _name: False,
    ) -> None:
        self.token_seconds = token_seconds
        self._frozen = stuck  # the inference loop frozen (stuck-inference, stuck-child)
        self._stuck = lambda: stuck() or active("silent-runner")
        self._active = active
        self.cond = threading.Condition()
        self.slots = [SlotState(i, n_ctx) for i in range(num_parallel)]
        self.state = "loading"  # -> ready -> closed; or -> held (killed, stuck in the driver); or -> dead
        self.ready_at = float("inf")
        self._incoming: deque[SlotTask] = deque()
        self._queries: list[SlotsQuery] = []
        self._next_id = 0
        self._conns: set[socket.socket] = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # cpp-httplib's default_socket_options (llama-server's HTTP server) set SO_REUSEADDR
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            raise
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept_loop, name=f"runner-{self.port}-http", daemon=True).start()
        threading.Thread(target=self._main_loop, name=f"runner-{self.port}-main", daemon=True).start()

    # -- life cycle -------------------------------------------------------------

    def ready(self) -> None:
        """The model is loaded: /health says ok, the main loop runs."""
        with self.cond:
            self.ready_at = time.monotonic()
            if self.state == "loading":
                self.state = "ready"
            self.cond.notify_all()

    def close(self) -> None:
        """The child exited: its port and connections are closed."""
        with self.cond:
            if self.state == "closed":
                return
            dead, self.state = self.state == "dead", "closed"
            if dead:  # its sockets went with it
                self.cond.notify_all()
                return
            conns = list(self._conns)
            self.cond.notify_all()
        for s in [self.sock, *conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept() and recv() blocked on it
            except OSError:
                pass
        self.sock.close()

    def hold(self) -> None:
        """SIGKILLed while stuck in the GPU driver: the port stays bound, nothing answers any more."""
        with self.cond:
            if self.state != "closed":
                self.state = "held"
            self.cond.notify_all()

    def _die(self) -> None:
        """kill-runner: the process is gone; its port closes, requests on it fail (call with cond held)."""
        log(f"kill-runner: runner 127.0.0.1:{self.port} killed")
        self.state = "dead"
        conns = list(self._conns)
        self.cond.notify_all()
        for sock in [self.sock, *conns]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()

    def ping(self) -> bool:
        """needsReload's Ping (10 s): False if the runner is gone or silent."""
        if self.state in ("dead", "closed"):
            slog(
                "WARN",
                "llama_server.go:1195",
                "llama-server process no longer running",
                sys=-1,
                string="signal: killed",
            )
            return False
        end = time.monotonic() + PING_SECONDS
        while self._active("silent-runner") and self.state == "ready":
            if time.monotonic() >= end:
                return False
            time.sleep(POLL)
        return True

    def _new_id(self) -> int:
        """server_queue::get_new_id(): completions and /slots queries share one counter."""
        self._next_id += 1
        return self._next_id - 1

    # -- the request side ---------------------------------------------------------

    def run(
        self, n_steps: int, n_predict: int, n_prompt: int, ctx: RequestCtx, embedding: bool = False
    ) -> Iterator[None]:
        """Post a task and yield once per token the main loop decodes for it.

        Raises ClientGone when the client leaves (the task is cancelled and
        its slot freed by the main loop, once the loop runs again).
        """
        if n_steps <= 0:
            return
        with self.cond:
            task = SlotTask(self._new_id(), n_steps, n_predict, n_prompt, embedding)
            self._incoming.append(task)
            self.cond.notify_all()
        seen = 0
        try:
            while seen < n_steps:
                with self.cond:
                    while task.produced == seen:
                        if self.state == "dead":
                            raise RunnerDied("an error was encountered while running the model: unexpected EOF")
                        if self.state == "closed":
                            raise ClientGone
                        self.cond.wait(POLL)
                        if ctx.gone():
                            raise ClientGone
                    got = task.produced
                for _ in range(got - seen):
                    yield None
                seen = got
        finally:
            if not task.finished:
                with self.cond:
                    task.cancelled = True
                    self.cond.notify_all()

    def query_slots(self, ctx: RequestCtx) -> tuple[list[dict[str, Any]], int] | None:
        """GET /slots: (slots, idle count) from the main loop, or None if the client left first."""
        with self.cond:
            query = SlotsQuery(self._new_id())
            self._queries.append(query)
            self.cond.notify_all()
            while query.result is None:
                if self.state == "ready" and self._frozen() and any(sl.task is not None for sl in self.slots):
                    # frozen inside a decode: the real server (build 11669) answers /slots from another thread
                    # while it yields, with the counters as they stood (tests/e2e/test_real_runner.py)
                    self._queries.remove(query)
                    snapshot = [sl.to_json() for sl in self.slots]
                    return snapshot, sum(sl.task is None for sl in self.slots)
                if self.state == "closed":
                    return None
                self.cond.wait(POLL)
                if query.result is None and ctx.gone():
                    if query in self._queries:
                        self._queries.remove(query)
                    return None
            return query.result

    # -- the main loop (server_queue::start_loop: tasks, then update_slots) -----

    def _main_loop(self) -> None:
        was_stuck = False
        with self.cond:
            while self.state not in ("closed", "dead"):
                if self.state == "ready" and self._active("kill-runner") and kill_runner_due(self.ready_at):
                    self._die()
                    break
                if self.state != "ready" or self._stuck():
                    was_stuck = was_stuck or self.state == "ready"
                    self.cond.wait(POLL)
                    continue
                now = time.monotonic()
                if was_stuck:  # the next token takes a whole token time after the loop comes back
                    was_stuck = False
                    for slot in self.slots:
                        slot.due = now + self.token_seconds
                self._step(now)
                dues = [slot.due for slot in self.slots if slot.task is not None]
                wait = min([POLL] + [due - now for due in dues])
                self.cond.wait(max(wait, 0.0))

    def _step(self, now: float) -> None:
        """One pass of the loop: cancels, new tasks, /slots answers, then one token per due slot."""
        for slot in self.slots:
            if slot.task is not None and slot.task.cancelled:
                self._release(slot)
        while self._incoming:
            slot = next((s for s in self.slots if s.task is None), None)
            if slot is None:
                break  # deferred until a slot is released
            task = self._incoming.popleft()
            if task.cancelled:
                continue
            slot.task = task
            slot.n_decoded = 0
            slot.n_remain = task.n_predict
            slot.has_next_token = True
            slot.due = now + self.token_seconds
        if self._queries:
            idle = sum(s.task is None for s in self.slots)
            snapshot = [s.to_json() for s in self.slots]
            for query in self._queries:
                query.result = (snapshot, idle)
            self._queries.clear()
        for slot in self.slots:
            task = slot.task
            if task is None or slot.due > now:
                continue
            task.produced += 1
            if not task.embedding:
                slot.n_decoded += 1
                if task.n_predict >= 0:
                    slot.n_remain = task.n_predict - slot.n_decoded
            slot.due = now + self.token_seconds
            if task.produced >= task.n_steps:
                slot.has_next_token = False
                task.finished = True
                self._release(slot)
        self.cond.notify_all()

    def _release(self, slot: SlotState) -> None:
        slot.task_prev, slot.task = slot.task, None

    # -- the HTTP thread ----------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return  # closed
            with self.cond:
                if self.state == "closed":
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()

    def _serve(self, conn: socket.socket, addr: Any) -> None:
        try:
            ChildHandler(conn, addr, self)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - one broken connection must not stop the child
            if self.state != "closed":
                log(f"runner 127.0.0.1:{self.port}: connection from {addr} ended: {e!r}")
        finally:
            with self.cond:
                self._conns.discard(conn)
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()


class ChildHandler(BaseHTTPRequestHandler):
    """llama-server's HTTP side: /health, /slots (through the main loop), 404 for the rest."""

    protocol_version = "HTTP/1.1"
    timeout = 5  # cpp-httplib's keep-alive timeout
    server: Child  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """Every method goes through _route."""
        self._route()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET  # noqa: N815

    def _route(self) -> None:
        child = self.server
        parts = urlsplit(self.path)
        if self.command not in ("GET", "HEAD"):
            self._drain_body()
        if child.state in ("held", "closed", "dead"):
            self.close_connection = True
            wait_for_peer_close(self.connection)
            return
        while child._active("silent-runner") and child.state == "ready":  # SIGSTOPped: accepted, never read
            if RequestCtx(self.connection).gone():
                self.close_connection = True
                return
            time.sleep(POLL)
        if child.state == "loading":  # middleware_server_state
            self._send(503, llama_error(503, "Loading model", "unavailable_error"))
            return
        get = self.command in ("GET", "HEAD")
        if parts.path == "/health" and get:
            self._send(200, _compact({"status": "ok"}))
            return
        if parts.path == "/slots" and get:
            result = child.query_slots(RequestCtx(self.connection))
            if result is None:  # the client gave up waiting for the main loop
                self.close_connection = True
                self._log("-", "client left before the main loop answered")
                return
            slots, idle = result
            fail = any(k == "fail_on_no_slot" and v for k, v in _query_pairs(parts.query))
            if fail and idle == 0:
                self._send(503, llama_error(503, "no slot available", "unavailable_error"))
                return
            self._send(200, _compact(slots))
            return
        self._send(404, llama_error(404, "File Not Found", "not_found_error"))

    def _drain_body(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or not (length or "0").isdigit():
            self.close_connection = True
            return
        if int(length or 0):
            self.rfile.read(int(length or 0))

    def _send(self, status: int, body: bytes) -> None:
        self.send_response_only(status)
        self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", ""))
        self.send_header("Content-Type", LLAMA_JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._log(str(status))

    def _log(self, status: str, note: str = "") -> None:
        extra = f" ({note})" if note else ""
        log(f"runner 127.0.0.1:{self.server.port}: {self.command} {self.path} {status}{extra}")

    def log_message(self, format: str, *args: Any) -> None:
        """Malformed requests and the like, in the stand-in's format."""
        log(f"runner 127.0.0.1:{self.server.port}: " + format % args)


class RealChild:
    """One loaded GGUF model in the real llama-server, started as Ollama starts it (issue 13).

    Where the release packages llama.cpp (Debian unstable), models made by the test bed run in
    the real engine: ``llama-server --model BLOB --port N --host 127.0.0.1 -c CTX -np P`` as a
    child of this process (so in the unit's cgroup, as Ollama's children are), on a port picked
    as Ollama picks it (bind :0, close, pass it on).  The load is over when its ``/health``
    answers 200 (503 "Loading model" before); completions go to its ``/completion``, streamed;
    ``/health`` and ``/slots`` are the real server's, which the probes ask directly.

    Wedges, done to the real process rather than modelled:
      stuck-inference / stuck-child   its main thread (the inference loop) frozen by
                                      freeze_thread.py (ptrace), for as long as the mode holds
      silent-runner                   the whole process SIGSTOPped (SIGCONT when the mode clears)
      kill-runner                     the process SIGKILLed once (the runner is gone)
    """

    def __init__(self, model_path: str, n_ctx: int, num_parallel: int, active: Callable[[str], bool]) -> None:
        self._active = active
        self.cond = threading.Condition()
        self.state = "loading"  # -> ready -> closed; or -> held (stuck in the driver: left frozen)
        self.ready_at = float("inf")
        self.exit_status: int | None = None
        self.port = _free_port()
        # startLlamaServer's flags (llm/llama_server.go); -t only when set, as there
        self.argv = [
            LLAMA_SERVER_REAL, "--model", model_path, "--port", str(self.port), "--host", "127.0.0.1",
            "--no-webui", "--offline", "-c", str(n_ctx * num_parallel), "-np", str(num_parallel),
            "--log-verbosity", "4", "--no-log-prefix", "--no-log-timestamps", "--flash-attn", "auto",
            "-b", str(LLAMA_BATCH), "-ub", str(LLAMA_BATCH),
        ]  # fmt: skip
        if LLAMA_THREADS:
            self.argv += ["-t", str(LLAMA_THREADS)]
        # the child's stdout and stderr go to Ollama's stderr (StatusWriter), so to the unit's journal
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        threading.Thread(target=self._forward, name=f"runner-{self.port}-output", daemon=True).start()
        self._freezer: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._killed = False
        threading.Thread(target=self._watch, name=f"runner-{self.port}-watch", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- life cycle -------------------------------------------------------------

    def health(self, timeout: float = 1.0) -> int | None:
        """Status of GET /health (None: no answer); how Ollama's load waits for the runner."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                resp.read()
                return resp.status
            finally:
                conn.close()
        except OSError:
            return None

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def _forward(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            _write(sys.stderr, raw.decode("utf-8", "replace").rstrip("\n"))

    def ping(self) -> bool:
        """needsReload's Ping (10 s): False if the process is gone or /health does not answer."""
        if self.exited():
            code = self.proc.returncode
            how = f"signal: {signal.Signals(-code).name.lower()[3:]}" if code < 0 else f"exit status {code}"
            slog("WARN", "llama_server.go:1195", "llama-server process no longer running", sys=code, string=how)
            return False
        return self.health(timeout=PING_SECONDS) in (200, 503)

    def ready(self) -> None:
        with self.cond:
            self.ready_at = time.monotonic()
            if self.state == "loading":
                self.state = "ready"
            self.cond.notify_all()

    def close(self) -> None:
        """Unload: kill the process and wait for it (Ollama's Close), releasing any freeze first."""
        with self.cond:
            if self.state == "closed":
                return
            self.state = "closed"
            self.cond.notify_all()
        self._unfreeze()
        self.proc.kill()  # a no-op once reaped
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a helper that attached meanwhile holds the exit: let it go
            self._unfreeze()
            self.proc.wait()

    def hold(self) -> None:
        """stuck-child's unload: the child never exits; it is left frozen, its port bound and silent."""
        with self.cond:
            if self.state != "closed":
                self.state = "held"
            self.cond.notify_all()

    # -- wedges, applied to the real process ----------------------------------------

    def _watch(self) -> None:
        """Apply and release the runner wedges as the modes say, and notice the process exiting."""
        while True:
            with self.cond:
                if self.state == "closed":
                    return
                if self.exit_status is None and self.proc.poll() is not None:
                    self.exit_status = self.proc.returncode
                    log(f"runner 127.0.0.1:{self.port} (pid {self.pid}) exited with status {self.exit_status}")
                    self.cond.notify_all()
            if self.exit_status is not None:
                return
            frozen = self._active("stuck-inference") or self._active("stuck-child") or self.state == "held"
            if frozen and self._freezer is None and self.state in ("ready", "held"):
                self._freeze()
                if self.state == "closed":  # closed while the helper attached: close() did not see it
                    self._unfreeze()
            elif not frozen and self._freezer is not None:
                self._unfreeze()
            stopped = self._active("silent-runner")
            if stopped != self._stopped and self.state != "loading":
                self._stopped = stopped
                self.proc.send_signal(signal.SIGSTOP if stopped else signal.SIGCONT)  # a no-op once reaped
                what = "stopped" if stopped else "continued"
                log(f"silent-runner: runner 127.0.0.1:{self.port} (pid {self.pid}) {what}")
            if (
                self._active("kill-runner")
                and not self._killed
                and self.state == "ready"
                and kill_runner_due(self.ready_at)
            ):
                self._killed = True
                log(f"kill-runner: SIGKILL to runner 127.0.0.1:{self.port} (pid {self.pid})")
                self.proc.send_signal(signal.SIGKILL)
            time.sleep(0.05)

    def _freeze(self) -> None:
        helper = subprocess.Popen(
            [sys.executable, FREEZE_HELPER, str(self.pid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        line = helper.stdout.readline().decode(errors="replace").strip() if helper.stdout else ""
        if not line.startswith("frozen"):
            log(f"stuck-inference: could not freeze runner pid {self.pid} (helper said {line!r})")
            helper.kill()
            helper.wait()
            return
        self._freezer = helper
        log(f"stuck-inference: main thread of runner 127.0.0.1:{self.port} (pid {self.pid}) frozen")

    def _unfreeze(self) -> None:
        helper, self._freezer = self._freezer, None
        if helper is None:
            return
        helper.terminate()
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
        log(f"stuck-inference: runner pid {self.pid} released")

    # -- completions ------------------------------------------------------------

    def complete(self, prompt: str, n_predict: int, ctx: RequestCtx, stats: dict[str, Any]) -> Iterator[str]:
        """POST /completion, streamed; yields each piece of text as the engine makes it.

        Raises ClientGone when our client leaves (closing the connection makes llama-server cancel
        the task), RunnerDied when the process goes.  ``stats`` gets the last chunk's token count
        (several tokens can make one piece of text) and stop type, which Ollama reports.
        """
        pieces: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        body = json.dumps({"prompt": prompt, "n_predict": n_predict, "stream": True, "cache_prompt": True})

        def read() -> None:
            try:
                conn.request("POST", "/completion", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                if resp.status != 200:
                    pieces.put(("error", f"{resp.status} {resp.read(4096).decode(errors='replace')}"))
                    return
                for raw in resp:
                    line = raw.strip()
                    if not line.startswith(b"data: "):
                        continue
                    obj = json.loads(line[6:])
                    pieces.put(("piece", obj.get("content", "")))
                    if obj.get("stop"):
                        timings = obj.get("timings") or {}
                        stats.update(tokens=timings.get("predicted_n"), stop_type=obj.get("stop_type"))
                        break
                pieces.put(("done", None))
            except (OSError, http.client.HTTPException, ValueError) as e:
                pieces.put(("error", repr(e)))

        threading.Thread(target=read, name=f"runner-{self.port}-completion", daemon=True).start()
        try:
            while True:
                try:
                    kind, value = pieces.get(timeout=POLL)
                except queue.Empty:
                    if ctx.gone():
                        raise ClientGone from None
                    if self.exit_status is not None or self.state == "closed":
                        raise RunnerDied(self._died()) from None
                    continue
                if kind == "piece":
                    yield value
                elif kind == "done":
                    return
                else:
                    if self.exit_status is not None or self.exited():
                        raise RunnerDied(self._died())
                    raise RunnerDied(f"llama runner error: {value}")
        finally:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _died(self) -> str:
        """What Ollama's Completion returns when the stream breaks (llm/llama_server.go)."""
        return "an error was encountered while running the model: unexpected EOF"


def _free_port() -> int:
    """A free port on 127.0.0.1, as Ollama picks the runner's (listen on :0, close, pass it on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """key=value pairs of a query string (values undecoded: only emptiness matters here)."""
    return [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]


class Runner:
    """A loaded model (runnerRef): its child's slots, in-flight count, keep-alive and expiry."""

    def __init__(
        self, model: ModelInfo, num_ctx: int, session_ns: int, num_parallel: int, child: Child | RealChild
    ) -> None:
        self.model = model
        self.num_ctx = num_ctx
        self.session_ns = session_ns
        self.slots = FifoSemaphore(num_parallel)  # Ollama's semaphore, in front of the child's own slots
        self.child = child
        self.port = child.port
        self.ref_count = 0
        self.expires_ns = 0  # Go's zero time until the first request finishes


@dataclass(eq=False)
class LlmRequest:
    """A request waiting for the scheduler to give it a runner."""

    model: ModelInfo
    num_ctx: int
    session_ns: int | None
    ctx: RequestCtx
    done: threading.Event = field(default_factory=threading.Event)
    runner: Runner | None = None
    error: ApiError | None = None
    skipped: bool = False


class PendingChannel:
    """pendingReqCh: a Go channel of MAX_QUEUE with a non-blocking send (select/default)."""

    def __init__(self, capacity: int) -> None:
        self._cond = threading.Condition()
        self._items: deque[LlmRequest] = deque()
        self._capacity = capacity
        self._receivers = 0

    def try_put(self, item: LlmRequest) -> bool:
        """Queue ``item``, or return False when the channel is full."""
        with self._cond:
            if len(self._items) >= self._capacity + self._receivers:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def get(self) -> LlmRequest:
        """The oldest item, waiting for one."""
        with self._cond:
            self._receivers += 1
            while not self._items:
                self._cond.wait()
            self._receivers -= 1
            return self._items.popleft()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Scheduler:
    """Ollama's scheduler: a fast path for loaded models, one pending loop for loads, one completion loop.

    ``cond`` plays loadedMu (and the runners' refMu): whoever holds it forever
    (an unload waiting for a stuck child) stops /api/ps and every generate.
    """

    def __init__(self, cfg: Config, active: Callable[[str], bool]) -> None:
        self.cfg = cfg
        self._active = active
        self.cond = threading.Condition()
        self.loaded: dict[str, Runner] = {}
        self.loading: ModelInfo | None = None
        self.unloads = 0
        self.pending = PendingChannel(cfg.max_queue)
        self._deadlines: dict[Runner, float] = {}
        self._completed: queue.SimpleQueue[tuple[str, Runner]] = queue.SimpleQueue()
        for target in (self._run_pending, self._run_completed, self._run_reaper):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()

    # -- called by request handlers -------------------------------------------

    def get_runner(self, model: ModelInfo, num_ctx: int, session_ns: int | None, ctx: RequestCtx) -> Runner:
        """getRunner + scheduleRunner: the runner for ``model``; call finished() once the request ends."""
        req = LlmRequest(model, max(num_ctx, 4), session_ns, ctx)
        with self.cond:
            r = self.loaded.get(model.name)
        if r is not None and r.num_ctx == req.num_ctx and r.child.ping():  # needsReload: options, then Ping
            with self.cond:
                if self.loaded.get(model.name) is r:
                    self._use_loaded(r, req)
                    return r
        if not self.pending.try_put(req):
            raise ApiError(503, ERR_MAX_QUEUE)
        while not req.done.wait(POLL):
            if ctx.gone():
                req.done.wait()  # Go's handler waits on, ignoring its context, until the scheduler gets to it
                break
        if req.skipped:
            raise Abandoned
        if req.error is not None:
            raise req.error
        assert req.runner is not None
        return req.runner

    def finished(self, runner: Runner) -> None:
        """A request that got ``runner`` is over (finishedReqCh)."""
        self._completed.put(("finished", runner))

    def expire_runner(self, model: ModelInfo) -> None:
        """keep_alive 0 with an empty prompt: unload ``model`` as soon as it is idle."""
        with self.cond:
            r = self.loaded.get(model.name)
            if r is None:
                return
            r.expires_ns = time.time_ns()
            self._deadlines.pop(r, None)
            r.session_ns = 0
            if r.ref_count <= 0:
                self._completed.put(("expired", r))

    def loaded_models(self) -> list[tuple[Runner, int]]:
        """(runner, expires_at ns) for /api/ps; waits out a load in progress if so configured."""
        with self.cond:
            while self.loading is not None and self.cfg.ps_blocks_during_load:
                self.cond.wait()
            now = time.time_ns()
            return [(r, r.expires_ns or now + r.session_ns) for r in self.loaded.values()]

    # -- the pending loop (processPending) ------------------------------------

    def _run_pending(self) -> None:
        while True:
            req = self.pending.get()
            if req.ctx.gone():  # pending.ctx.Err() != nil: skipped, never answered
                req.skipped = True
                req.done.set()
                continue
            try:
                self._schedule(req)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the scheduler
                log(f"scheduler error: {e!r}")
                req.error = ApiError(500, str(e))
                req.done.set()

    def _schedule(self, req: LlmRequest) -> None:
        while True:
            with self.cond:
                r = self.loaded.get(req.model.name)
            healthy = r is not None and r.num_ctx == req.num_ctx and r.child.ping()  # needsReload again
            with self.cond:
                if r is not None and self.loaded.get(req.model.name) is not r:
                    continue
                victim = None
                if r is not None:
                    if healthy:
                        self._use_loaded(r, req)
                        req.runner = r
                        req.done.set()
                        return
                    victim = r  # other options, or a runner that is gone or does not answer: reload
                elif len(self.loaded) >= self.cfg.max_loaded:
                    victim = self._runner_to_unload()
            while self._active("stuck-eviction"):  # #17408: blocked for good, silently
                time.sleep(POLL)
            if victim is None:
                self._load(req)
                return
            with self.cond:
                if self.loaded.get(victim.model.name) is not victim:
                    continue
                self._deadlines.pop(victim, None)
                victim.session_ns = 0
                if victim.ref_count <= 0:
                    self._completed.put(("expired", victim))
                seen = self.unloads
                while self.unloads == seen:  # until the unload happens: busy victims are waited for
                    self.cond.wait()

    def _inference_stuck(self) -> bool:
        """The children's main loops are stuck (stuck-inference, stuck-child)."""
        return self._active("stuck-inference") or self._active("stuck-child")

    def _runner_to_unload(self) -> Runner:
        """findRunnerToUnload: by keep-alive, then blob path; the first idle one, else the first."""
        runners = sorted(self.loaded.values(), key=lambda r: (r.session_ns, r.model.blob))
        return next((r for r in runners if r.ref_count <= 0), runners[0])

    def _use_loaded(self, r: Runner, req: LlmRequest) -> None:
        r.ref_count += 1
        self._deadlines.pop(r, None)
        if req.session_ns is not None:
            r.session_ns = req.session_ns
        self.cond.notify_all()

    def _load(self, req: LlmRequest) -> None:
        """Start a child and wait until it is ready, logging what Ollama logs around a load."""
        cfg, m = self.cfg, req.model
        with self.cond:
            self.loading = m
        np_ = cfg.num_parallel
        child: Child | RealChild
        try:
            if m.gguf:
                child = RealChild(m.gguf, req.num_ctx, np_, self._active)
            else:
                child = Child(req.num_ctx, np_, cfg.token_seconds, self._inference_stuck, self._active)
        except OSError as e:
            slog("INFO", "sched.go:641", "Load failed", model=m.blob, error=f"failed to start llama-server: {e}")
            with self.cond:
                self.loading = None
                self.cond.notify_all()
            req.error = ApiError(500, f"failed to start llama-server: {e}")
            req.done.set()
            return
        port = child.port
        cmd = (
            " ".join(child.argv)
            if isinstance(child, RealChild)
            else f"{LLAMA_SERVER} --model {m.blob} --port {port} --host 127.0.0.1 --no-webui --offline"
            f" -c {req.num_ctx * np_} -np {np_}"
        )
        slog("INFO", "llama_server.go:433", "starting llama-server", cmd=cmd)
        slog("INFO", "sched.go:613", "system memory", total="15.5 GiB", free="12.1 GiB", free_swap="0 B")
        slog("INFO", "llama_server.go:1048", "loading model via llama-server", model=m.blob)
        start = time.monotonic()
        slog("INFO", "llama_server.go:1295", "waiting for llama-server to start responding")
        slog(
            "INFO",
            "llama_server.go:1350",
            "waiting for llama-server to become available",
            status="llm server loading model",
        )
        error = self._wait_loaded(child, req, start)
        if error is not None:
            child.close()
            slog("INFO", "sched.go:641", "Load failed", model=m.blob, error=error[0])
            with self.cond:
                self.loading = None
                self.cond.notify_all()
            req.error = error[1]
            req.done.set()
            return
        slog("INFO", "llama_server.go:1362", f"llama-server started in {time.monotonic() - start:0.2f} seconds")
        session = cfg.keep_alive_ns if req.session_ns is None else req.session_ns
        child.ready()
        r = Runner(m, req.num_ctx, session, np_, child)
        with self.cond:
            self.loaded[m.name] = r
            self.loading = None
            slog("INFO", "sched.go:728", "loaded runners", count=len(self.loaded))
            r.ref_count += 1
            self.cond.notify_all()
        # the goroutine that holds the runner until it answers waits once more (quickly)
        slog("INFO", "llama_server.go:1295", "waiting for llama-server to start responding")
        slog("INFO", "llama_server.go:1362", f"llama-server started in {time.monotonic() - start:0.2f} seconds")
        req.runner = r
        req.done.set()

    def _wait_loaded(self, child: Child | RealChild, req: LlmRequest, start: float) -> tuple[str, ApiError] | None:
        """Wait for the load to end (waitUntilRunning): None when ready, else (log text, client error).

        A simulated child loads for STANDIN_LOAD_SECONDS of progress (none while stall-load holds);
        a real one until its /health answers 200, polled as Ollama polls it.  Both fail after
        OLLAMA_LOAD_TIMEOUT without progress, or when the client leaves; a real one also when its
        process exits.
        """
        cfg = self.cfg
        progress = 0.0
        last = last_activity = start
        while True:
            now = time.monotonic()
            if isinstance(child, RealChild):
                if child.health(timeout=0.5) == 200:
                    return None
                if child.exited():
                    msg = f"llama runner process has terminated: exit status {child.proc.returncode}"
                    return msg, ApiError(500, msg)
                last_activity = now  # a live process loading: Ollama sees the load's progress
            else:
                if not self._active("stall-load"):
                    progress += now - last
                    last_activity = now
                last = now
                if progress >= cfg.load_seconds:
                    return None
            if req.ctx.gone():
                slog(
                    "WARN",
                    "llama_server.go:1301",
                    "client connection closed before llama-server finished loading, aborting load",
                )
                msg = "timed out waiting for llama-server to start: context canceled"
                return msg, ApiError(499, "request canceled")
            if (now - last_activity) * NS >= cfg.load_timeout_ns:
                msg = "timed out waiting for llama-server to start - "
                return msg, ApiError(500, msg)
            time.sleep(min(0.05, max(0.001, cfg.load_seconds - progress)) if not isinstance(child, RealChild) else 0.05)

    # -- the completion loop (processCompleted) and the expiry timers ----------

    def _run_completed(self) -> None:
        while True:
            kind, r = self._completed.get()
            with self.cond:
                if kind == "finished":
                    self._on_finished(r)
                else:
                    self._on_expired(r)

    def _on_finished(self, r: Runner) -> None:
        if self.loaded.get(r.model.name) is not r:
            return
        r.ref_count -= 1
        if r.ref_count > 0:
            return
        if r.session_ns <= 0:
            self._deadlines.pop(r, None)
            self._completed.put(("expired", r))
            return
        r.expires_ns = time.time_ns() + r.session_ns
        if r.session_ns < FOREVER_NS:
            self._deadlines[r] = time.monotonic() + r.session_ns / NS
        self.cond.notify_all()

    def _on_expired(self, r: Runner) -> None:
        if r.ref_count > 0:  # busy again: try again shortly, as the Go loop does
            threading.Timer(0.01, self._completed.put, args=(("expired", r),)).start()
            return
        if self.loaded.get(r.model.name) is not r:
            return
        if self._active("stuck-child"):
            log(f"stuck-child: unloading {r.model.name} waits for a child that never exits (scheduler held)")
            r.child.hold()  # killed, but stuck in the driver: its port stays bound and silent
            while True:  # runner.unload() -> Close() waits for the child, with the locks held
                time.sleep(3600)
        del self.loaded[r.model.name]
        r.child.close()
        self._deadlines.pop(r, None)
        self.unloads += 1
        self.cond.notify_all()

    def _run_reaper(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                for r, due in list(self._deadlines.items()):
                    if due <= now:
                        del self._deadlines[r]
                        self._completed.put(("expired", r))
                nxt = min(self._deadlines.values(), default=None)
                self.cond.wait(None if nxt is None else max(0.0, nxt - now))


# --------------------------------------------------------------------------
# API payloads
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


def parse_keep_alive(value: Any) -> int | None:
    """Parse keep_alive like api.Duration: seconds or a Go duration string.

    Returns ns, or None when the request carries none; negative means forever
    (FOREVER_NS), 0 means unload when idle.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ApiError(400, "json: cannot unmarshal bool into Go struct field .keep_alive")
    if isinstance(value, (int, float)):
        return FOREVER_NS if value < 0 else min(int(value * NS), FOREVER_NS)
    if isinstance(value, str):
        try:
            ns = go_parse_duration(value)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        return FOREVER_NS if ns < 0 else ns
    raise ApiError(400, "json: cannot unmarshal keep_alive")


def _num_ctx(body: dict[str, Any], default: int) -> int:
    """options.num_ctx, or the server's default; another value than the loaded one forces a reload."""
    options = _field(body, "options", dict, "map[string]interface {}") or {}
    raw = options.get("num_ctx")
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ApiError(400, f'option "num_ctx" must be of type integer, got {_json_kind(raw)}')
    return int(raw)


class Api:
    """The Ollama endpoints the stand-in implements, over the scheduler and its fake children."""

    def __init__(self, cfg: Config, modes: ModeFile, started_ns: int | None = None) -> None:
        self.cfg = cfg
        self.modes = modes
        self.sched = Scheduler(cfg, modes.active)
        self.started_ns = time.time_ns() if started_ns is None else started_ns

    # -- read-only endpoints ------------------------------------------------

    def root(self, _body: bytes, _ctx: RequestCtx) -> Reply:
        """GET / : the liveness text every Ollama answers."""
        return text_reply(200, "Ollama is running")

    def version(self, _body: bytes, _ctx: RequestCtx) -> Reply:
        """GET /api/version."""
        return json_reply(200, {"version": VERSION})

    def tags(self, _body: bytes, _ctx: RequestCtx) -> Reply:
        """GET /api/tags: the installed models, newest first."""
        order = ["name", "model", "modified_at", "size", "digest", "details"]
        out = []
        for m in sorted(MODELS.values(), key=lambda m: m.age_s):
            entry = m.entry()
            entry["modified_at"] = go_time(self.started_ns - m.age_s * NS, local=True)
            out.append({k: entry[k] for k in order})
        return json_reply(200, {"models": out})

    def ps(self, _body: bytes, _ctx: RequestCtx) -> Reply:
        """GET /api/ps: the loaded models, longest time to expiry first; no in-use or queue field."""
        rows = []
        for r, expires in self.sched.loaded_models():
            entry = r.model.entry()
            entry["expires_at"] = go_time(expires, local=True)
            entry["size_vram"] = 0
            entry["context_length"] = r.num_ctx
            rows.append((expires // NS, entry))
        rows.sort(key=lambda row: -row[0])
        return json_reply(200, {"models": [entry for _, entry in rows]})

    def show(self, raw: bytes, _ctx: RequestCtx) -> Reply:
        """POST /api/show: a model's details, read from disk (no runner involved)."""
        body = decode_body(raw, "api.ShowRequest")
        m = resolve_model(body.get("model") if body.get("model") is not None else body.get("name"))
        entry = m.entry()
        info: dict[str, Any] = {"general.architecture": "llama", "general.file_type": 0 if m.gguf else 15}
        if m.gguf:
            info["general.parameter_count"] = m.size // 4
        out = {
            "modelfile": f"FROM {m.blob}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": entry["details"],
            "model_info": info,
            "capabilities": ["completion"],
            "modified_at": go_time(self.started_ns - m.age_s * NS, local=True),
        }
        return json_reply(200, out)

    # -- model endpoints ----------------------------------------------------

    def generate(self, raw: bytes, ctx: RequestCtx) -> Reply:
        """POST /api/generate."""
        return self._complete(raw, ctx, chat=False)

    def chat(self, raw: bytes, ctx: RequestCtx) -> Reply:
        """POST /api/chat."""
        return self._complete(raw, ctx, chat=True)

    def _runner(self, model: ModelInfo, body: dict[str, Any], ctx: RequestCtx) -> Runner:
        """Schedule a runner for this request; it is released after the request's gin line."""
        runner = self.sched.get_runner(
            model, _num_ctx(body, self.cfg.num_ctx), parse_keep_alive(body.get("keep_alive")), ctx
        )
        ctx.on_done.append(lambda: self.sched.finished(runner))
        return runner

    def _complete(self, raw: bytes, ctx: RequestCtx, chat: bool) -> Reply:
        t0 = time.monotonic_ns()
        body = decode_body(raw, "api.ChatRequest" if chat else "api.GenerateRequest")
        model = resolve_model(body.get("model"))
        name = body["model"]
        stream = _field(body, "stream", bool, "bool")
        stream = True if stream is None else stream
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        n, limited = _num_predict(body)
        _num_ctx(body, self.cfg.num_ctx)  # validated before anything is scheduled
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

        def bare(reason: str) -> Reply:
            done = base()
            if chat:
                done["message"] = {"role": "assistant", "content": ""}
            else:
                done["response"] = ""
            done.update(done=True, done_reason=reason)
            return json_reply(200, done)

        if empty and keep_alive == 0:
            self.sched.expire_runner(model)
            return bare("unload")

        runner = self._runner(model, body, ctx)
        load_ns = max(1, time.monotonic_ns() - t0)
        if empty:  # the direct path: no slot, answered as soon as the model is loaded
            return bare("load")

        prompt_ids = _token_ids(prompt)
        words = _words(prompt, n)
        reason = "length" if limited else "stop"
        produced: list[str] = []
        stats: dict[str, Any] = {}  # a real runner's own count and stop type

        def tokens() -> Iterator[str]:
            runner.slots.acquire(ctx)
            try:
                child = runner.child
                if isinstance(child, RealChild):  # the real engine makes the text
                    with contextlib.closing(child.complete(prompt, n, ctx, stats)) as pieces:
                        for piece in pieces:
                            produced.append(piece)
                            yield piece
                    return
                with contextlib.closing(child.run(len(words), n if limited else -1, len(prompt_ids), ctx)) as steps:
                    for i, _ in enumerate(steps):
                        produced.append(words[i])
                        yield words[i]
            finally:
                runner.slots.release()

        def final(text: str, eval_ns: int) -> dict[str, Any]:
            done = base()
            if chat:
                done["message"] = {"role": "assistant", "content": text}
            else:
                done["response"] = text
            count = stats.get("tokens") or len(produced)
            stop = {"limit": "length", "eos": "stop", "word": "stop"}.get(stats.get("stop_type") or "", reason)
            done.update(done=True, done_reason=stop)
            if not chat:
                done["context"] = prompt_ids + [1000 + i for i in range(count)]
            done.update(_metrics(t0, load_ns, len(prompt_ids), count, eval_ns))
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
            try:
                text = "".join(tokens())
            except RunnerDied as e:
                raise ApiError(500, str(e)) from None
            return json_reply(200, final(text, time.monotonic_ns() - e0))

        def objects() -> Iterator[dict[str, Any]]:
            e0 = time.monotonic_ns()
            try:
                for w in tokens():
                    yield chunk(w)
            except RunnerDied as e:  # Ollama sends the error as the stream's last object
                yield {"error": str(e)}
                return
            yield final("", time.monotonic_ns() - e0)

        return Reply(200, NDJSON_TYPE, stream=_ndjson(objects()))

    def _embed_inputs(self, runner: Runner, count: int, ctx: RequestCtx) -> None:
        """An embedding takes a slot like a generation, one token time per input (n_decoded stays 0)."""
        if isinstance(runner.child, RealChild):  # the bed's GGUF models are not embedding models
            raise ApiError(400, f'"{runner.model.name.removesuffix(":latest")}" does not support embeddings')
        runner.slots.acquire(ctx)
        try:
            with contextlib.closing(runner.child.run(count, -1, count, ctx, embedding=True)) as steps:
                for _ in steps:
                    pass
        finally:
            runner.slots.release()

    def embed(self, raw: bytes, ctx: RequestCtx) -> Reply:
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
        model = resolve_model(body.get("model"))
        name = body["model"]
        runner = self._runner(model, body, ctx)
        load_ns = max(1, time.monotonic_ns() - t0)
        if not inputs:
            return json_reply(200, {"model": name, "embeddings": []})
        self._embed_inputs(runner, len(inputs), ctx)
        count = sum(len(_token_ids(x)) for x in inputs)
        out: dict[str, Any] = {"model": name, "embeddings": [embedding(x) for x in inputs]}
        out["total_duration"] = max(1, time.monotonic_ns() - t0)
        out["load_duration"] = load_ns
        out["prompt_eval_count"] = count
        return json_reply(200, out)

    def embeddings(self, raw: bytes, ctx: RequestCtx) -> Reply:
        """POST /api/embeddings: the legacy single-prompt endpoint."""
        body = decode_body(raw, "api.EmbeddingRequest")
        model = resolve_model(body.get("model"))
        prompt = _field(body, "prompt", str, "string") or ""
        runner = self._runner(model, body, ctx)
        if prompt:
            self._embed_inputs(runner, 1, ctx)
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

    def __init__(self, sock: socket.socket, modes: ModeFile, cfg: Config) -> None:
        addr = sock.getsockname()
        socketserver.BaseServer.__init__(self, addr, StandinHandler)
        self.socket = sock
        self.server_name = str(addr[0])
        self.server_port = int(addr[1])
        self.modes = modes
        self.api = Api(cfg, modes)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track open connections, so a stop can close them all as http.Server.Close does."""
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """srvr.Close(): stop listening and cut every connection."""
        try:
            self.socket.close()
        except OSError:
            pass
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of a traceback: clients hang up mid-answer all the time."""
        exc = sys.exc_info()[1]
        log(f"connection from {client_address} ended: {exc!r}")


ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "root", "HEAD": "root"},
    "/api/version": {"GET": "version", "HEAD": "version"},
    "/api/tags": {"GET": "tags", "HEAD": "tags"},
    "/api/ps": {"GET": "ps"},
    "/api/show": {"POST": "show"},
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
        """Like the base class, but every method goes through _dispatch, and completes with a gin line."""
        self._mode_label = "ok"
        self._status: int | None = None
        self._gin = False
        ctx = RequestCtx(self.connection)
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
            self._gin = True  # from here on the request reaches gin, which logs it when it completes
            self._t0 = time.monotonic_ns()
            self._dispatch(ctx)
            self.wfile.flush()
        except ClientGone:
            self.close_connection = True
        except Abandoned:
            self.close_connection = True
            self._gin = False
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        finally:
            if self._gin:
                self._gin_line()
            for done in ctx.on_done:
                done()

    def _gin_line(self) -> None:
        """The access line, when the request completes: its status, or 500 for a client that left first."""
        host = str(self.client_address[0])
        ip = _go_parse_ip(host)
        parts = urlsplit(self.path)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        latency = time.monotonic_ns() - self._t0
        gin(self._status or 500, latency, ip if ip is not None else host, self.command, path)

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue`` until the body is read (never in silent mode)."""
        return True

    def send_response(self, code: int, message: str | None = None) -> None:
        """Status line and Date, without Python's Server header (Go sends none)."""
        self._status = code
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

    def _dispatch(self, ctx: RequestCtx) -> None:
        modes = self.server.modes.current()
        self._mode_label = modes.label(LATCHABLE_MODES)
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
            reply = getattr(self.server.api, name)(raw, ctx)
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
        try:
            self._send(reply, modes)
        finally:
            close = getattr(reply.stream, "close", None)
            if close is not None:
                close()  # ends the generator, so it gives back its slot

    def _send(self, reply: Reply, modes: Modes) -> None:
        if "trickle" in modes:
            self._trickle(reply)
            return
        head = self.command == "HEAD"
        chunked = reply.stream is not None and not head
        first = b""
        if chunked:
            assert reply.stream is not None
            first = next(reply.stream, b"")  # headers go out with the first chunk, as in gin
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
        for data in _prepend(first, reply.stream):
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
        self._gin = False  # never completes
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
        self._gin = False  # never completes
        self.close_connection = True
        wait_for_peer_close(self.connection)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """The first chunk (already taken to decide the headers), then the rest."""
    if first:
        yield first
    yield from rest


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


_WEDGE_SIGNALS = {signal.SIGUSR1: "stuck-inference", signal.SIGUSR2: "silent"}
_server: StandinServer | None = None


def _on_wedge_signal(signum: int, _frame: Any) -> None:
    mode = _WEDGE_SIGNALS[signal.Signals(signum)]
    _process_modes.add(mode)
    log(f"received {signal.Signals(signum).name}: {mode} until this process exits")


def _on_sigterm(signum: int, _frame: Any) -> None:
    """Exit at once (hung handler threads must not delay a stop), unless a child is stuck in D state.

    Ollama's stop closes the listener and every connection, then kills and
    waits for each child; a child in the GPU driver never exits, so neither
    does the server, until SIGKILL.
    """
    server = _server
    if server is not None and server.modes.active("stuck-child") and server.api.sched.loaded:
        log(
            f"received {signal.Signals(signum).name}: closing the listener; a child is stuck in D state,"
            " so the unload never returns and only SIGKILL ends this process"
        )
        server.close_all()
        while True:
            time.sleep(3600)
    log(f"received {signal.Signals(signum).name}, exiting")
    os._exit(0)


USAGE = "usage: ollama serve  (ollamactl test stand-in for the Ollama server)"


def main(argv: list[str] | None = None) -> int:
    """Run ``ollama serve``; returns the exit status."""
    global _server
    started_ns = time.time_ns()
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["serve"]):
        sys.stderr.write(f"Error: unknown arguments {args!r}\n{USAGE}\n")
        return 2

    mode_file = os.environ.get("OLLAMA_STANDIN_MODE_FILE") or DEFAULT_MODE_FILE
    modes = read_modes(mode_file)
    log(f"ollama {VERSION} stand-in, pid {os.getpid()}, modes: {modes.label()} (from {mode_file})")
    cfg = Config.from_env(os.environ)
    log(f"scheduler: {cfg.describe()}")

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
    MODELS.update((m.name, m) for m in real_models())  # the bed's GGUF models, where llama-server is installed
    mode_state = ModeFile(mode_file, started_ns)
    mode_state.current()
    mode_state.watch()
    server = StandinServer(sock, mode_state, cfg)
    _server = server
    bound = join_host_port(*(str(x) for x in sock.getsockname()[:2]))
    log(f"Listening on {bound} (version {VERSION})")
    slog("INFO", "routes.go:2008", f"Listening on {bound} (version {VERSION})")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
