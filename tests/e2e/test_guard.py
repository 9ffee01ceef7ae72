"""The guard for the official ``ollama`` client, end to end, as alice's app.

A stuck inference loop is confirmed by the verdict and leads to one restart and a
successful retry; a slow generation past the client's timeout (busy) and a stopped
Ollama (an admin's stop) raise the app's own error, with the verdict attached, and
restart nothing.

The client comes from PyPI (downloaded on the host, installed in the
container next to Debian's own packages): ollama 0.3 on Debian 12, whose
pydantic is 1.10, and the newest ollama on Debian 13.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import UNIT, Bed

CLIENT = {
    "bookworm": ("3.11", ["ollama==0.3.3", "httpx<0.28"]),
    "trixie": ("3.13", ["ollama"]),
    "sid": ("3.14", ["ollama"]),
}
FROM_DEBIAN = ("pydantic", "pydantic_core")  # the client runs on the release's own pydantic

APP = r"""
import asyncio, json, sys, time
sys.path.insert(0, "/opt/ollama-client")
import ollama
from ollamactl.guard import aguard, guard

URL = "http://127.0.0.1:11434"
kind = sys.argv[1]


def failed(exc):
    v = getattr(exc, "ollamactl_verdict", None)
    err = getattr(exc, "ollamactl_error", None)
    return {"raised": type(exc).__name__, "outcome": getattr(v, "outcome", None),
            "evidence": getattr(v, "evidence", None), "no_verdict": str(err) if err else None,
            "notes": getattr(exc, "__notes__", [])}


if kind == "sync":
    client = guard(ollama.Client(host=URL, timeout=2))
    r = client.generate(model="standin", prompt="hello", options={"num_predict": 3})
    out = {"text": r["response"], "actions": [x.action for x in client.restarts]}
elif kind == "async":
    async def main():
        aclient = aguard(ollama.AsyncClient(host=URL, timeout=2))
        r = await aclient.chat(model="standin", messages=[{"role": "user", "content": "hi"}])
        return {"text": r["message"]["content"], "actions": [x.action for x in aclient.restarts]}
    out = asyncio.run(main())
else:  # "slow" (a generation longer than the client timeout) or "stopped": the app's own error
    client = guard(ollama.Client(host=URL, timeout=2))
    try:
        client.generate(model="standin", prompt="a long answer", options={"num_predict": 400})
        out = {"raised": None}
    except Exception as exc:
        out = failed(exc)
    out["actions"] = [x.action for x in client.restarts]
print(json.dumps(out))
"""
#: The app's settings: back-to-back restarts allowed (two kinds in one test), the model it uses, and no
#: startup grace (a wedge right after the previous restart would otherwise be "starting", not restarted).
APP_ENV = {"OLLAMACTL_RESTART_BACKOFF": "0", "OLLAMACTL_MODEL": "standin", "OLLAMACTL_WATCH_STARTUP_GRACE": "0"}
#: Another user's long generation (1500 tokens at the stand-in's 10 ms: 15 s), holding the only slot.
LOAD_UNIT = "guard-test-load.service"
LOAD = (
    "import json, urllib.request\n"
    "body = json.dumps({'model': 'standin', 'prompt': 'a long story', 'options': {'num_predict': 1500}})\n"
    "req = urllib.request.Request('http://127.0.0.1:11434/api/generate', body.encode())\n"
    "for line in urllib.request.urlopen(req, timeout=60):\n"
    "    pass\n"
)


@pytest.fixture(scope="session")
def client_wheels(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for suite, (python, reqs) in CLIENT.items():
        d = tmp_path_factory.mktemp(f"client-{suite}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", python,
             "-d", str(d), *reqs],
            check=True, timeout=300,
        )  # fmt: skip
        for whl in d.glob("*.whl"):
            if whl.name.split("-")[0].lower() in FROM_DEBIAN:
                whl.unlink()
        out[suite] = d
    return out


@pytest.fixture
def app(healthy: Bed, client_wheels) -> Bed:
    """alice's app (/home/alice/app.py) with the PyPI client installed next to Debian's packages."""
    c = healthy.c
    wheels = sorted(client_wheels[healthy.suite].glob("*.whl"))
    for whl in wheels:
        c.write_file(f"/root/client/{whl.name}", whl.read_bytes())
    c.run(
        ["python3", "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--break-system-packages",
         "--target", "/opt/ollama-client", *[f"/root/client/{w.name}" for w in wheels]],
        check=True, timeout=120,
    )  # fmt: skip
    c.write_file("/home/alice/app.py", APP)
    return healthy


def run_app(bed: Bed, kind: str) -> dict:
    r = bed.c.run(["python3", "/home/alice/app.py", kind], user="alice", env=APP_ENV, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def warm_up(bed: Bed) -> None:
    """Load the model, as an app that has been working does (a deep probe never loads one)."""
    code = (
        "import json, urllib.request\n"
        "body = json.dumps({'model': 'standin', 'prompt': 'hi', 'stream': False, 'options': {'num_predict': 1}})\n"
        "req = urllib.request.Request('http://127.0.0.1:11434/api/generate', body.encode())\n"
        "urllib.request.urlopen(req, timeout=30).read()\n"
    )
    r = bed.python(code, user="root")
    assert r.returncode == 0, r.stderr


def test_app_with_guarded_client_recovers_from_a_stuck_inference_loop(app: Bed):
    """A stuck inference loop (faithful wedge; a restart clears it): one restart, the retry succeeds."""
    for kind in ("sync", "async"):
        app.recover_api()
        warm_up(app)
        before = app.prop("InvocationID")
        app.set_mode("stuck-inference=once")  # this process is stuck from now on; the next one is not
        time.sleep(0.5)  # the stand-in re-reads the mode file every 0.2 s
        out = run_app(app, kind)
        assert out["actions"] == ["restarted"] and out["text"], out
        assert app.prop("InvocationID") != before


def test_a_slow_generation_raises_the_apps_timeout_without_a_restart(app: Bed):
    """400 tokens at the stand-in's 10 ms each take 4 s, past the client's 2 s: the app's timeout, no restart.

    Alone, the app's request is gone when the verdict looks (the client gave up, its slot is free).
    Queued behind another user's long generation, the only slot is processing and /slots answers.
    Neither is a wedge: the verdict says healthy (or busy, if something was slow but progressing),
    and the other user's generation goes on.
    """
    warm_up(app)
    before = app.prop("InvocationID")
    out = run_app(app, "slow")
    assert out["raised"] in ("ReadTimeout", "TimeoutException"), out
    assert out["outcome"] in ("healthy", "busy") and out["actions"] == [], out
    assert any("not restarted" in n for n in out["notes"]), out

    app.c.run(["systemd-run", "--collect", f"--unit={LOAD_UNIT}", "python3", "-c", LOAD], check=True)
    try:
        time.sleep(1)  # the long generation holds the slot
        out = run_app(app, "slow")
        assert out["raised"] in ("ReadTimeout", "TimeoutException"), out
        assert out["outcome"] in ("healthy", "busy") and out["actions"] == [], out
        assert "1 of 1 slots busy" in out["evidence"], out  # the verdict saw the other user's generation
        assert app.prop("ActiveState", unit=LOAD_UNIT) == "active", "the other user's generation was cut off"
    finally:
        app.c.run(["systemctl", "stop", LOAD_UNIT])
    assert app.prop("InvocationID") == before


def test_a_stopped_ollama_stays_stopped_and_the_app_gets_its_own_error(app: Bed):
    c = app.c
    c.run(["systemctl", "stop", UNIT], check=True)
    try:
        out = run_app(app, "stopped")
        assert out["raised"] in ("ConnectionError", "ConnectError"), out
        assert out["outcome"] == "stopped" and out["actions"] == [], out
        time.sleep(1)
        assert app.prop("ActiveState") == "inactive"
    finally:
        c.run(["systemctl", "start", UNIT], check=True)
        app.recover_api()
