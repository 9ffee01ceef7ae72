"""Issue 15: a load that never starts (ollama #17408) is caught by whoever waits on it, never by the watchdog.

On each release, with the shipped watchdog running (plus ``model``) and the
stand-in following OLLAMA.md (its ``stuck-eviction`` mode: loaded models keep
answering, every load hangs, nothing is logged):

- alice's app, whose guarded ``generate`` needs the other model, gets one
  restart and its answer on the retry; the watchdog restarts nothing itself;
- the legitimate wait (Ollama evicts only idle runners: the only loadable
  slot is busy with a long stream) restarts nothing, the stream completes,
  and the app's next request completes after it;
- ``ollamactl probe --load``: exit 0 on a healthy server (it loads the model),
  the load-stuck exit code on the deadlock within load_stuck_after and a
  sample, and busy (not load-stuck) behind a busy model.

The app and the probe use load_stuck_after = 10 s (the default is 60 s) so the
cases fit CI; the figures are in the recovery timings.
"""

from __future__ import annotations

import json
import time

import pytest

from bench import harm_bed as hc
from tests.e2e.conftest import TIMINGS, Bed
from tests.e2e.test_guard import app, client_wheels  # noqa: F401 - fixtures: alice's app with the PyPI client

LOAD_STUCK = 19
BUSY = 15
STUCK_AFTER = 10.0
#: One loadable model at a time: a load of the other model needs an eviction (as in #17408).
ONE_MODEL = {"OLLAMA_MAX_LOADED_MODELS": "1"}
APP_ENV = {"OLLAMACTL_RESTART_BACKOFF": "0", "OLLAMACTL_LOAD_STUCK_AFTER": f"{STUCK_AFTER:g}"}
APP = r"""
import json, sys, time
sys.path.insert(0, "/opt/ollama-client")
import ollama
from ollamactl.guard import guard

model, timeout = sys.argv[1], float(sys.argv[2])
client = guard(ollama.Client(host="http://127.0.0.1:11434", timeout=timeout))
t0 = time.monotonic()
try:
    r = client.generate(model=model, prompt="hello", options={"num_predict": 3})
    out = {"raised": None, "text": r["response"]}
except Exception as exc:
    v = getattr(exc, "ollamactl_verdict", None)
    out = {"raised": type(exc).__name__, "outcome": getattr(v, "outcome", None),
           "evidence": getattr(v, "evidence", None), "notes": getattr(exc, "__notes__", [])}
out["seconds"] = round(time.monotonic() - t0, 2)
out["actions"] = [x.action for x in client.restarts]
out["verdicts"] = [(getattr(v, "outcome", None), getattr(v, "evidence", None)) for v in client.verdicts]
print(json.dumps(out))
"""
#: Another user's long stream on the loaded model: 2500 tokens at the stand-in's 10 ms, 25 s.
STREAM = (
    "import json, sys, urllib.request\n"
    "body = json.dumps({'model': 'standin', 'prompt': 'a long story', 'options': {'num_predict': 2500}})\n"
    "req = urllib.request.Request('http://127.0.0.1:11434/api/generate', body.encode())\n"
    "n = sum(1 for _ in urllib.request.urlopen(req, timeout=120))\n"
    "print('chunks', n)\n"
)


@pytest.fixture
def harm(app: Bed):  # noqa: F811 - the imported fixture
    h = hc.HarmBed(app.c, report=TIMINGS.append)
    h.install()
    app.c.write_file("/home/alice/load_app.py", APP)
    try:
        yield h
    finally:
        h.c.run(["systemctl", "stop", "load-stream.service"])
        h.restore()


def _app_run(h: hc.HarmBed, model: str, timeout: float) -> dict:
    r = h.c.run(["python3", "/home/alice/load_app.py", model, str(timeout)], user="alice", env=APP_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _probe_load(h: hc.HarmBed, model: str) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    r = h.c.run(["ollamactl", "probe", "--load", model, "--json"], user="alice", env=APP_ENV, timeout=300)
    assert r.stdout.count("\n") == 1, (r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout), time.monotonic() - t0


def _stream(h: hc.HarmBed) -> None:
    h.c.run(["systemd-run", "--collect", "--unit=load-stream", "python3", "-c", STREAM], check=True)
    time.sleep(1.0)  # it holds the only slot


def test_an_app_waiting_on_a_load_that_never_starts_gets_one_restart_and_its_answer(harm: hc.HarmBed):
    harm.configure(ONE_MODEL)
    harm.warm()
    harm.settle()
    since, inv, nr = harm.mark()
    harm.set_mode("stuck-eviction=once")
    time.sleep(0.5)  # the stand-in reads the mode file every 0.2 s
    out = _app_run(harm, hc.OTHER_MODEL, STUCK_AFTER + 5)
    rs = harm.restarts(since, inv, nr)
    detail = f"{rs}; {out}\n{harm.watchdog_log(since - 1, 30)}"
    assert out["raised"] is None and out["text"] and out["actions"] == ["restarted"], detail
    assert out["verdicts"][0][0] == "load-stuck" and "ollama #17408" in out["verdicts"][0][1], detail
    assert rs.count == 1 and not rs.decisions, detail  # the app's restart; the watchdog asked for none
    harm.report(
        "load-stuck (#17408) caught by the app's guard",
        f"one restart, answered on the retry; {out['seconds']:.1f}s from the request to the answer"
        f" (load_stuck_after {STUCK_AFTER:g}s, client timeout {STUCK_AFTER + 5:g}s)",
    )


def test_a_load_waiting_for_a_busy_model_is_not_restarted(harm: hc.HarmBed):
    """Ollama evicts only idle runners: the other model's load waits for the stream, then proceeds."""
    harm.configure(ONE_MODEL)
    harm.warm()
    harm.settle()
    since, inv, nr = harm.mark()
    _stream(harm)
    out = _app_run(harm, hc.OTHER_MODEL, STUCK_AFTER + 2)  # gives up while the stream still holds the slot
    assert out["raised"] in ("ReadTimeout", "TimeoutException") and out["actions"] == [], out
    assert out["outcome"] == "busy" and "the load waits for busy runner(s)" in out["evidence"], out
    later = _app_run(harm, hc.OTHER_MODEL, 120)  # waits for the stream to end, then the load
    stream = harm.c.run(["journalctl", "-u", "load-stream", "-o", "cat", "--no-pager"]).stdout
    rs = harm.restarts(since, inv, nr)
    assert later["raised"] is None and later["text"], later
    assert "chunks" in stream, stream  # the stream completed
    assert rs.count == 0, f"{rs}\n{harm.watchdog_log(since - 1, 30)}"
    harm.report(
        "a load waiting for a busy model", f"restarts 0; the app's next request answered in {later['seconds']:.1f}s"
    )


def test_probe_load_healthy_deadlocked_and_busy(harm: hc.HarmBed):
    harm.configure(ONE_MODEL)
    harm.warm()
    code, rep, _ = _probe_load(harm, hc.OTHER_MODEL)  # loads it, evicting standin
    assert code == 0 and rep["outcome"] == "healthy" and "loaded in" in rep["evidence"], rep

    harm.warm()  # standin again (evicting the other)
    harm.set_mode("stuck-eviction=once")
    time.sleep(0.5)
    code, rep, took = _probe_load(harm, hc.OTHER_MODEL)
    assert code == LOAD_STUCK and rep["outcome"] == "load-stuck", rep
    assert STUCK_AFTER <= took <= STUCK_AFTER + 10, took  # load_stuck_after, then one verdict
    harm.report("probe --load on #17408", f"load-stuck (exit {code}) in {took:.1f}s")

    harm.restore()
    harm.configure(ONE_MODEL)
    harm.warm()
    _stream(harm)
    code, rep, _ = _probe_load(harm, hc.OTHER_MODEL)
    assert code == BUSY and rep["outcome"] == "busy" and "busy runner" in rep["evidence"], rep
