#!/usr/bin/python3
"""Runs inside a test container: load, wedges and watching for the do-no-harm cases.

Copied to /root/harm_driver.py (with tests/loadgen.py as /root/loadgen.py) by
bench/harm_bed.py and run there as root, so that every request goes over
the container's loopback and every timing is taken next to the unit, not
through nsenter.  Standard library only (Python 3.11 on Debian 12).

    harm_driver.py generate --model M [--num-predict 1] [--timeout 30]
        one generate; exit 0 if it completed
    harm_driver.py ps
        the loaded models and their expires_at, from GET /api/ps
    harm_driver.py hold --seconds S [--run JSON]...
        run the given loadgen command lines (each {"delay": s, "argv": [...]}) and,
        until S seconds have passed and all of them ended, sample ollama.service
        twice a second: which ActiveStates and InvocationIDs were seen, NRestarts
    harm_driver.py wedge --mode MODE [--clients N ...] --bound B
        keep N clients busy, write MODE to the stand-in's mode file, wait up to B
        seconds for a new InvocationID, then for /api/version; report when

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

UNIT = "ollama.service"
HOST, PORT = "127.0.0.1", 11434
URL = f"http://{HOST}:{PORT}"
MODE_FILE = "/etc/ollama-standin/mode"
LOADGEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadgen.py")


def _loadgen() -> Any:
    spec = importlib.util.spec_from_file_location("loadgen", LOADGEN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["loadgen"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def show(*props: str) -> dict[str, str]:
    """systemctl show for ollama.service: {property: value}."""
    out = subprocess.run(
        ["systemctl", "show", UNIT, *(f"--property={p}" for p in props)], capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def api_answers(timeout: float = 0.5) -> bool:
    try:
        urllib.request.urlopen(f"{URL}/api/version", timeout=timeout).read()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False


def generate(model: str, num_predict: int = 1, timeout: float = 30) -> tuple[bool, str, float]:
    """One non-streamed generate: (completed, detail, seconds)."""
    body = {"model": model, "prompt": "are you there?", "stream": False, "options": {"num_predict": num_predict}}
    req = urllib.request.Request(
        f"{URL}/api/generate", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            answer = json.loads(r.read())
        return bool(answer.get("done")), answer.get("done_reason", ""), time.monotonic() - t0
    except Exception as e:  # noqa: BLE001
        return False, repr(e)[:200], time.monotonic() - t0


#: A stranger's loop (run as that user): an empty generate for the model every EVERY seconds; prints how many
#: were answered 200.  Ollama answers these (done_reason "load") without the inference loop, and logs a gin
#: line for each like any completed request (issue 14 §1).
FORGER = r"""
import json, signal, sys, time, urllib.request
url, model, every, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
n = {"tried": 0, "ok": 0}
def done(*_):
    print(json.dumps(n), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
end = time.monotonic() + seconds
while time.monotonic() < end:
    n["tried"] += 1
    req = urllib.request.Request(url + "/api/generate", json.dumps({"model": model}).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=every) as r:
            n["ok"] += r.status == 200
    except Exception:
        pass
    time.sleep(every)
done()
"""


def start_forger(user: str, model: str, every: float, seconds: float) -> subprocess.Popen[str]:
    """``user``'s empty generates every ``every`` s for ``seconds`` (a non-member: no ollamactl rights)."""
    argv = ["runuser", "-u", user, "--", "python3", "-c", FORGER, URL, model, str(every), str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_mode(mode: str) -> None:
    """Atomically, so the stand-in never reads half a file (its mtime is now: =once latches)."""
    tmp = f"{MODE_FILE}.harm-tmp"
    with open(tmp, "w") as f:
        f.write(mode + "\n")
    os.replace(tmp, MODE_FILE)


# --------------------------------------------------------------------------- hold


def cmd_hold(args: argparse.Namespace) -> dict[str, Any]:
    runs = [json.loads(r) for r in args.run]
    results: list[dict[str, Any]] = [{} for _ in runs]
    first = show("InvocationID", "NRestarts", "ActiveState", "SubState")
    t0 = time.monotonic()

    def launch(i: int, run: dict[str, Any]) -> None:
        time.sleep(run.get("delay", 0))
        started = time.monotonic() - t0
        p = subprocess.run([sys.executable, LOADGEN, *run["argv"]], capture_output=True, text=True)
        line = (p.stdout.strip().splitlines() or ["{}"])[-1]
        try:
            summary = json.loads(line)
        except ValueError:
            summary = {"unparsed": p.stdout[-500:]}
        results[i] = {
            "argv": run["argv"],
            "rc": p.returncode,
            "started": round(started, 1),
            "ended": round(time.monotonic() - t0, 1),
            "summary": summary,
            "stderr": p.stderr[-500:],
        }

    threads = [threading.Thread(target=launch, args=(i, r), daemon=True) for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    states: dict[str, float] = {}
    invocations = [first.get("InvocationID", "")]
    nrestarts = [first.get("NRestarts", "")]
    api_down = 0
    while True:
        now = time.monotonic() - t0
        s = show("InvocationID", "NRestarts", "ActiveState", "SubState")
        key = f"{s.get('ActiveState')}/{s.get('SubState')}"
        states.setdefault(key, round(now, 1))
        if s.get("InvocationID") and s["InvocationID"] != invocations[-1]:
            invocations.append(s["InvocationID"])
        nrestarts.append(s.get("NRestarts", ""))
        if args.api and not api_answers(2.0):
            api_down += 1
        if now >= args.seconds and not any(t.is_alive() for t in threads):
            break
        time.sleep(args.interval)
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "first": first,
        "states": states,  # "Active/Sub" -> first seen (s after start)
        "invocations": invocations,
        "nrestarts": [nrestarts[0], nrestarts[-1]],
        "api_down_samples": api_down,
        "runs": results,
    }


# --------------------------------------------------------------------------- wedge


class Clients:
    """N clients, each sending one generate after another until told to stop; every outcome kept."""

    def __init__(self, lg: Any, n: int, model: str, num_predict: int, timeout: float) -> None:
        self.lg = lg
        self.spec = lg.LoadSpec(url=URL, clients=max(n, 1), model=model, num_predict=num_predict, timeout=timeout)
        self.n = n
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: list[tuple[float, float, str, str]] = []  # (start, end) monotonic, kind, detail
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        while not self.stop.is_set():
            s = time.monotonic()
            kind, detail = self.lg.one_request(self.spec, HOST, PORT)
            with self.lock:
                self.outcomes.append((s, time.monotonic(), kind, detail))
            if kind != "ok":
                self.stop.wait(0.2)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.spec.timeout + 5)

    def ok_count(self) -> int:
        with self.lock:
            return sum(o[2] == "ok" for o in self.outcomes)

    def summary(self, wedged: float, recovered: float | None) -> dict[str, Any]:
        """Requests before the wedge; those it killed (in flight, failed); refused while down; after."""
        with self.lock:
            outs = list(self.outcomes)
        before = [o for o in outs if o[1] <= wedged]
        during = [o for o in outs if o[1] > wedged and (recovered is None or o[0] < recovered)]
        after = [o for o in outs if recovered is not None and o[0] >= recovered]
        killed = [o for o in during if o[2] not in ("ok", "refused")]
        return {
            "clients": self.n,
            "requests": len(outs),
            "ok": sum(o[2] == "ok" for o in outs),
            "before_ok": sum(o[2] == "ok" for o in before),
            "before_failed": sum(o[2] != "ok" for o in before),
            "during_ok": sum(o[2] == "ok" for o in during),
            "killed": len(killed),
            "killed_kinds": sorted({o[2] for o in killed}),
            "refused": sum(o[2] == "refused" for o in during),
            "after_ok": sum(o[2] == "ok" for o in after),
            "after_failed": sum(o[2] != "ok" for o in after),
            "first_failure": next((f"{o[2]}: {o[3]}" for o in outs if o[2] != "ok"), None),
        }


def cmd_wedge(args: argparse.Namespace) -> dict[str, Any]:
    lg = _loadgen()
    clients = Clients(lg, args.clients, args.model, args.num_predict, args.request_timeout)
    inv0 = show("InvocationID")["InvocationID"]
    clients.start()
    time.sleep(args.warmup)
    if args.clients:
        end = time.monotonic() + 30
        while clients.ok_count() == 0 and time.monotonic() < end:  # the load really runs before the wedge
            time.sleep(0.1)
    trigger: dict[str, Any] = {}
    forger = start_forger(args.forge_as, args.model, args.forge_every, args.bound) if args.forge_as else None
    t0 = time.monotonic()
    write_mode(args.mode)
    if args.trigger_model:  # e.g. stuck-eviction: a request that needs a load

        def load() -> None:
            trigger["result"] = generate(args.trigger_model, 1, args.bound + 30)

        threading.Thread(target=load, daemon=True).start()
    inv = inv0
    while time.monotonic() < t0 + args.bound:
        inv = show("InvocationID")["InvocationID"]
        if inv and inv != inv0:
            break
        time.sleep(0.05)
    restarted = bool(inv) and inv != inv0
    out: dict[str, Any] = {"mode": args.mode, "restarted": restarted, "inv0": inv0, "inv1": inv}
    recovered_at = None
    if restarted:
        seen = time.monotonic() - t0
        exit_usec = int(show("ActiveExitTimestampMonotonic").get("ActiveExitTimestampMonotonic") or 0)
        out["detect"] = round(exit_usec / 1e6 - t0, 2) if exit_usec / 1e6 > t0 else round(seen, 2)
        while time.monotonic() < t0 + args.bound + 30:
            if api_answers(0.5):
                recovered_at = time.monotonic()
                break
            time.sleep(0.05)
        out["recover"] = None if recovered_at is None else round(recovered_at - t0, 2)
        ok, detail, secs = generate(args.model, 1, 30)
        out["generate_after"] = {"ok": ok, "detail": detail, "seconds": round(secs, 2)}
        time.sleep(args.after)
    else:
        out["api_answers"] = api_answers(2.0)
        ok, detail, secs = generate(args.model, 1, 10)
        out["generate_loaded_model"] = {"ok": ok, "detail": detail, "seconds": round(secs, 2)}
    out["trigger"] = {"model": args.trigger_model, "answered": "result" in trigger, "result": trigger.get("result")}
    if forger is not None:
        forger.terminate()
        stdout, stderr = forger.communicate(timeout=30)
        out["forger"] = {"user": args.forge_as, "stdout": stdout[-300:], "stderr": stderr[-300:]}
    clients.finish()
    out["load"] = clients.summary(t0, recovered_at) if args.clients else None
    out["final_invocation"] = show("InvocationID")["InvocationID"]
    return out


def cmd_ps(args: argparse.Namespace) -> dict[str, Any]:
    """GET /api/ps: the loaded models and their expires_at."""
    with urllib.request.urlopen(f"{URL}/api/ps", timeout=args.timeout) as r:
        models = json.loads(r.read()).get("models") or []
    return {"models": {m["name"]: m.get("expires_at") for m in models}}


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    ok, detail, secs = generate(args.model, args.num_predict, args.timeout)
    return {"ok": ok, "detail": detail, "seconds": round(secs, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", default="standin:latest")
    g.add_argument("--num-predict", type=int, default=1)
    g.add_argument("--timeout", type=float, default=30)
    h = sub.add_parser("hold")
    h.add_argument("--seconds", type=float, required=True)
    h.add_argument("--run", action="append", default=[], help='{"delay": s, "argv": [loadgen args]}')
    h.add_argument("--interval", type=float, default=0.5)
    h.add_argument("--api", action="store_true", help="also check that /api/version answers in each sample")
    q = sub.add_parser("ps")
    q.add_argument("--timeout", type=float, default=10)
    w = sub.add_parser("wedge")
    w.add_argument("--mode", required=True)
    w.add_argument("--clients", type=int, default=0)
    w.add_argument("--model", default="standin:latest")
    w.add_argument("--num-predict", type=int, default=50)
    w.add_argument("--request-timeout", type=float, default=120)
    w.add_argument("--warmup", type=float, default=3)
    w.add_argument("--bound", type=float, default=60)
    w.add_argument("--after", type=float, default=3)
    w.add_argument("--trigger-model", default="")
    w.add_argument("--forge-as", default="", help="a user who sends empty generates meanwhile (issue 14 §1)")
    w.add_argument("--forge-every", type=float, default=2.0)
    args = p.parse_args()
    out = {"generate": cmd_generate, "hold": cmd_hold, "ps": cmd_ps, "wedge": cmd_wedge}[args.cmd](args)
    print(json.dumps(out), flush=True)
    return 0 if args.cmd != "generate" or out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
