#!/usr/bin/python3
"""Keep N clients busy with generate requests against one Ollama, and say how it went.

    python3 tests/loadgen.py --url http://127.0.0.1:11434 --clients 4 --seconds 60 \
        --model standin --num-predict 20 [--timeout 120] [--stream] [--max-requests 100000]

Each client sends one request after another until ``--seconds`` have passed
(an answer that is still coming then is waited for, up to ``--timeout``), so
the server sees N requests in flight the whole time: at twice its slots, half
of them queue.  Prints one JSON line: requests, ok, failed, p50/p95/max
latency of the successful ones, failures by kind.  It exists so that tests can
show that a busy server is not restarted and that no client request fails.

Safe to run inside test containers: it talks only to the loopback URL it is
given (anything else is refused before a connection is made), sends at most
``--max-requests`` requests, and stops by itself after ``--seconds`` plus one
request's ``--timeout``.  Standard library only; usable as a module
(``run(LoadSpec(...))``) and as a script.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_SECONDS = 24 * 3600.0
MAX_CLIENTS = 1000


@dataclass(frozen=True)
class LoadSpec:
    """What to send, to where, for how long."""

    url: str
    clients: int = 2
    seconds: float = 10.0
    model: str = "standin"
    num_predict: int = 8
    timeout: float = 120.0  # per request, from sending it to the last byte of the answer
    stream: bool = False
    max_requests: int = 100_000
    prompt: str = "why is the sky blue?"


@dataclass(frozen=True)
class Outcome:
    """One request: when it started (monotonic), how long it took, and "ok" or what went wrong."""

    client: int
    started: float
    latency: float
    kind: str
    detail: str = ""


@dataclass
class LoadResult:
    """Every request's outcome, and the summary line built from them."""

    spec: LoadSpec
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The one-line JSON report: counts, latency percentiles of successes, failures by kind."""
        ok = sorted(o.latency for o in self.outcomes if o.kind == "ok")
        errors = Counter(o.kind for o in self.outcomes if o.kind != "ok")
        first = next((o for o in self.outcomes if o.kind != "ok"), None)
        return {
            "requests": len(self.outcomes),
            "ok": len(ok),
            "failed": sum(errors.values()),
            "p50": _round(percentile(ok, 50)),
            "p95": _round(percentile(ok, 95)),
            "max": _round(ok[-1] if ok else None),
            "errors": dict(sorted(errors.items())),
            "first_error": f"{first.kind}: {first.detail}" if first else None,
            "clients": self.spec.clients,
            "seconds": self.spec.seconds,
            "elapsed": _round(self.elapsed),
            "model": self.spec.model,
            "num_predict": self.spec.num_predict,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def loopback_target(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL on this machine's loopback; anything else is a ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r}: only http://<loopback>:<port> URLs are allowed")
    host = parts.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{url!r}: only loopback addresses (127.0.0.0/8, ::1, localhost) are allowed")
    return host, parts.port or 80


def validate(spec: LoadSpec) -> None:
    """Refuse a load that is not bounded, or not aimed at loopback."""
    loopback_target(spec.url)
    if not 1 <= spec.clients <= MAX_CLIENTS:
        raise ValueError(f"--clients must be 1..{MAX_CLIENTS}")
    if not 0 < spec.seconds <= MAX_SECONDS:
        raise ValueError(f"--seconds must be > 0 and <= {MAX_SECONDS:g}")
    if not 0 < spec.timeout <= MAX_SECONDS:
        raise ValueError(f"--timeout must be > 0 and <= {MAX_SECONDS:g}")
    if not 1 <= spec.max_requests <= 10_000_000:
        raise ValueError("--max-requests must be 1..10000000")
    if spec.num_predict < 1:
        raise ValueError("--num-predict must be >= 1")


class _Budget:
    """A shared request count, so the clients together never exceed --max-requests."""

    def __init__(self, limit: int) -> None:
        self._left = limit
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def _classify(exc: BaseException) -> str:
    """A short kind for a failure, for the errors-by-kind count."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "disconnected"
    if isinstance(exc, (http.client.HTTPException, ValueError)):
        return "bad_response"
    if isinstance(exc, OSError):
        return "os_error"
    return type(exc).__name__


def one_request(spec: LoadSpec, host: str, port: int) -> tuple[str, str]:
    """Send one generate and read the whole answer; ("ok", "") or (kind, detail)."""
    body = {
        "model": spec.model,
        "prompt": spec.prompt,
        "stream": spec.stream,
        "options": {"num_predict": spec.num_predict},
    }
    deadline = time.monotonic() + spec.timeout
    conn = http.client.HTTPConnection(host, port, timeout=spec.timeout)
    try:
        conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return f"http_{resp.status}", resp.read(300).decode("utf-8", "replace")
        last: dict[str, Any] = {}
        if spec.stream:
            for line in resp:
                if time.monotonic() > deadline:
                    return "timeout", f"stream still going after {spec.timeout:g}s"
                if line.strip():
                    last = json.loads(line)
                    if "error" in last:
                        return "stream_error", str(last["error"])[:300]
        else:
            last = json.loads(resp.read())
        if not last.get("done"):
            return "incomplete", "answer ended without done=true"
        return "ok", ""
    except Exception as e:  # noqa: BLE001 - every failure is recorded by kind, none stops the run
        return _classify(e), repr(e)[:300]
    finally:
        conn.close()


def run(spec: LoadSpec) -> LoadResult:
    """Keep ``spec.clients`` requests in flight for ``spec.seconds``; every outcome is recorded."""
    validate(spec)
    host, port = loopback_target(spec.url)
    result = LoadResult(spec)
    lock = threading.Lock()
    budget = _Budget(spec.max_requests)
    t0 = time.monotonic()
    stop_at = t0 + spec.seconds

    def client(i: int) -> None:
        while time.monotonic() < stop_at and budget.take():
            started = time.monotonic()
            kind, detail = one_request(spec, host, port)
            out = Outcome(i, started - t0, time.monotonic() - started, kind, detail)
            with lock:
                result.outcomes.append(out)
            if kind != "ok":  # a failing server is not hammered: 0.5 s when nothing listens, else 50 ms
                pause = 0.5 if kind in ("refused", "os_error") else 0.05
                time.sleep(min(pause, max(0.0, stop_at - time.monotonic())))

    threads = [
        threading.Thread(target=client, args=(i,), name=f"loadgen-{i}", daemon=True) for i in range(spec.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop_at - time.monotonic()) + spec.timeout + 5)
    result.elapsed = time.monotonic() - t0
    return result


def long_prompt(chars: int) -> str:
    """``chars`` letters, no spaces: one token each for a byte-fallback vocabulary (the bed's GGUF models)."""
    return "".join(chr(0x41 + (i * 7) % 26) for i in range(chars))


def main(argv: list[str] | None = None) -> int:
    """Command line: run the load, print the summary line; 0 if every request succeeded, 1 if not."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:11434 (loopback only)")
    p.add_argument("--clients", type=int, default=2, help="requests kept in flight (default 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long new requests are sent (default 10)")
    p.add_argument("--model", default="standin", help="model name (default standin)")
    p.add_argument("--num-predict", type=int, default=8, help="tokens per request (default 8)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request limit in seconds (default 120)")
    p.add_argument("--stream", action="store_true", help="stream the answers (default: one JSON answer)")
    p.add_argument(
        "--prompt-chars", type=int, default=0, help="a prompt of this many letters instead of a question (a long one)"
    )
    p.add_argument("--max-requests", type=int, default=100_000, help="at most this many requests (default 100000)")
    args = p.parse_args(argv)
    spec = LoadSpec(
        url=args.url,
        clients=args.clients,
        seconds=args.seconds,
        model=args.model,
        num_predict=args.num_predict,
        timeout=args.timeout,
        stream=args.stream,
        max_requests=args.max_requests,
        **({"prompt": long_prompt(args.prompt_chars)} if args.prompt_chars > 0 else {}),
    )
    try:
        validate(spec)
    except ValueError as e:
        p.error(str(e))
    result = run(spec)
    summary = result.summary()
    print(json.dumps(summary), flush=True)
    return 0 if summary["failed"] == 0 and summary["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
