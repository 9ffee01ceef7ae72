#!/usr/bin/python3
"""The probe's claims, asked of the real llama-server (issue 13, part 3): run as root inside a root that has it.

    python3 real_runner_driver.py claims  [--model PATH]
    python3 real_runner_driver.py silence [--model PATH] [--prompt-tokens N] [--load-clients K]

No systemd and no stand-in: llama-server is started here, directly, with the flags the stand-in
(and Ollama) gives it, and asked through ollamactl.probe, the code the verdict uses.  Prints one
JSON object (the last line) with what was seen; tests/e2e/test_real_runner.py asserts on it.

``claims``: /health during the load (503) and after (200); /slots idle, then busy with n_decoded
rising under a stream; with the main thread frozen (freeze_thread.py) /health 200 and /slots
silent, and a completion making no progress; released, the stream goes on; SIGSTOP: both silent;
SIGKILL: both refused.  ``silence``: the longest a healthy server leaves /slots unanswered while it
evaluates a long prompt (``--load-clients`` more streams beside it): the figure deep_confirm must
stay above.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ollamactl import probe

SERVER = "/usr/bin/llama-server"
GGUF = "/var/lib/ollama-standin/gguf"
FREEZE = "/usr/local/lib/ollama-standin/freeze_thread.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(model: str, np_: int, ctx: int, batch: int = 512) -> tuple[subprocess.Popen[bytes], int]:
    """llama-server with the flags Ollama gives it (llm/llama_server.go), its output discarded."""
    port = free_port()
    argv = [SERVER, "--model", model, "--port", str(port), "--host", "127.0.0.1", "--no-webui", "--offline",
            "-c", str(ctx * np_), "-np", str(np_), "--flash-attn", "auto",
            "-b", str(batch), "-ub", str(batch)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


def runner(port: int, timeout: float = 2.0) -> probe.RunnerResult:
    return asyncio.run(probe.runner(port, timeout))


def health_until_ok(port: int, deadline: float = 60.0) -> dict[str, Any]:
    """Poll /health from the process start until 200: the statuses seen, in order, and when 200 came."""
    seen: list[str] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            st = str(conn.getresponse().status)
            conn.close()
        except OSError:
            st = "refused"
        if not seen or seen[-1] != st:
            seen.append(st)
        if st == "200":
            return {"seen": seen, "ready_s": round(time.monotonic() - t0, 3)}
        time.sleep(0.002)
    return {"seen": seen, "ready_s": None}


class Stream:
    """One streamed /completion in a thread: pieces counted as they arrive."""

    def __init__(self, port: int, prompt: str, n_predict: int) -> None:
        self.pieces = 0
        self.last_at = 0.0
        self.done = False
        self.error = ""
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        body = json.dumps({"prompt": prompt, "n_predict": n_predict, "stream": True})
        threading.Thread(target=self._run, args=(body,), daemon=True).start()

    def _run(self, body: str) -> None:
        try:
            self._conn.request("POST", "/completion", body=body, headers={"Content-Type": "application/json"})
            for line in self._conn.getresponse():
                if line.startswith(b"data: "):
                    self.pieces += 1
                    self.last_at = time.monotonic()
                    if json.loads(line[6:]).get("stop"):
                        break
            self.done = True
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.error = repr(e)

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conn.close()


class Freezer:
    """freeze_thread.py holding one thread stopped until unfreeze()."""

    def __init__(self, tid: int) -> None:
        self.proc = subprocess.Popen([sys.executable, FREEZE, str(tid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().decode().strip()


def freeze(tid: int) -> Freezer:
    return Freezer(tid)


def unfreeze(f: Freezer) -> None:
    f.proc.terminate()
    f.proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(r: probe.RunnerResult) -> dict[str, Any]:
    return {
        "slots": r.slots_status,
        "health": r.health_status,
        "seconds": r.seconds,
        "busy": [s.id for s in r.slots if s.is_processing],
        "n_decoded": [s.n_decoded for s in r.slots],
    }


def all_stopped(pid: int, timeout: float = 5.0) -> None:
    """Return once every thread of ``pid`` is stopped (state T), or raise after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        states = set()
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.add(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:  # a thread that ended meanwhile
                continue
        if states <= {"T", "t"}:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"threads of {pid} not stopped after SIGSTOP: {sorted(states)}")
        time.sleep(0.01)


def claims(model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "server": SERVER}
    proc, port = start(model, 2, 2048)
    try:
        out["load"] = health_until_ok(port)
        out["idle"] = summary(runner(port))
        idle_freezer = freeze(proc.pid)
        out["idle_frozen"] = summary(runner(port, 2.0))
        unfreeze(idle_freezer)
        stream = Stream(port, "the quick brown fox", 100_000)
        time.sleep(0.5)
        a = runner(port)
        time.sleep(0.5)
        b = runner(port)
        out["busy"] = [summary(a), summary(b)]
        freezer = freeze(proc.pid)
        out["freeze_helper"] = freezer.line
        time.sleep(0.2)  # a piece already on its way
        pieces_at_freeze = stream.pieces
        out["frozen"] = summary(runner(port, 2.0))
        time.sleep(1.0)
        out["frozen_again"] = summary(runner(port, 2.0))
        out["frozen_stream_progress"] = stream.pieces - pieces_at_freeze
        with open(f"/proc/{proc.pid}/task/{proc.pid}/stat") as f:
            out["frozen_thread_state"] = f.read().rsplit(")", 1)[1].split()[0]
        unfreeze(freezer)
        time.sleep(0.5)
        resumed_from = stream.pieces
        out["released"] = summary(runner(port))
        time.sleep(0.5)
        out["released_stream_progress"] = stream.pieces - resumed_from
        stream.close()
        os.kill(proc.pid, signal.SIGSTOP)
        all_stopped(proc.pid)  # SIGSTOP reaches the threads asynchronously: probe once none runs (CI saw /health ok)
        out["sigstop"] = summary(runner(port, 2.0))
        os.kill(proc.pid, signal.SIGCONT)
        out["sigcont"] = summary(runner(port))
        proc.kill()
        proc.wait()
        out["killed"] = summary(runner(port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def silence(model: str, prompt_tokens: int, load_clients: int, batch: int) -> dict[str, Any]:
    """Poll /slots every 0.1 s (timeout 60 s) while a long prompt evaluates in batches of ``batch``.

    Two figures: the slowest /slots answer, and the longest time the long prompt's slot showed the same
    counters (id_task, n_prompt_tokens_processed, n_decoded) while processing, with the CPUs the process
    used over that stretch.
    """
    proc, port = start(model, 1 + load_clients, prompt_tokens + 512, batch=batch)
    out: dict[str, Any] = {"model": model, "prompt_tokens": prompt_tokens, "load_clients": load_clients}
    out["batch"] = batch
    try:
        out["load"] = health_until_ok(port, 120)
        others = [Stream(port, "the", 100_000) for _ in range(load_clients)]
        # bytes tokenize one token each through byte fallback (the bed's vocabulary has few words)
        prompt = "".join(chr(0x41 + (i * 7) % 26) for i in range(prompt_tokens))
        t0 = time.monotonic()
        long = Stream(port, prompt, 4)
        worst = 0.0
        samples = 0
        first_piece = None
        slot = load_clients  # the long prompt's slot: the other streams took theirs first (ids in order)
        last: tuple[Any, ...] | None = None
        flat_from = (time.monotonic(), cpu_seconds(proc.pid))
        longest = (0.0, 0.0)  # (seconds flat, CPUs over them)
        while not long.done and not long.error and time.monotonic() - t0 < 600:
            r = runner(port, 60.0)
            samples += 1
            worst = max(worst, r.seconds)
            now = (time.monotonic(), cpu_seconds(proc.pid))
            busy = [sl for sl in r.slots if sl.id == slot and sl.is_processing]
            if busy:
                if busy[0].progress != last:
                    last, flat_from = busy[0].progress, now
                elif now[0] - flat_from[0] > longest[0]:
                    longest = (now[0] - flat_from[0], (now[1] - flat_from[1]) / (now[0] - flat_from[0]))
            if long.pieces and first_piece is None:
                first_piece = time.monotonic() - t0
            time.sleep(0.1)
        out.update(
            prompt_seconds=round(first_piece or (time.monotonic() - t0), 2),
            total_seconds=round(time.monotonic() - t0, 2),
            samples=samples,
            longest_slots_seconds=round(worst, 3),
            longest_flat_seconds=round(longest[0], 2),
            cpus_while_flat=round(longest[1], 2),
            error=long.error,
        )
        for s in others:
            s.close()
    finally:
        proc.kill()
        proc.wait()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("claims", "silence"))
    ap.add_argument("--model", default=f"{GGUF}/tiny.gguf")
    ap.add_argument("--prompt-tokens", type=int, default=6000)
    ap.add_argument("--load-clients", type=int, default=1)
    ap.add_argument("--batch", type=int, default=512)
    a = ap.parse_args()
    result = claims(a.model) if a.what == "claims" else silence(a.model, a.prompt_tokens, a.load_clients, a.batch)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
