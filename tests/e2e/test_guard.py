"""The guard for the official ``ollama`` client, end to end: alice's app recovers from a deep wedge.

The client comes from PyPI (downloaded on the host, installed in the
container next to Debian's own packages): ollama 0.3 on Debian 12, whose
pydantic is 1.10, and the newest ollama on Debian 13.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import UNIT, Bed

CLIENT = {"bookworm": ("3.11", ["ollama==0.3.3", "httpx<0.28"]), "trixie": ("3.13", ["ollama"])}
FROM_DEBIAN = ("pydantic", "pydantic_core")  # the client runs on the release's own pydantic

APP = r"""
import asyncio, json, sys, time
sys.path.insert(0, "/opt/ollama-client")
import ollama
from ollamactl.guard import aguard, guard

URL = "http://127.0.0.1:11434"
if sys.argv[1] == "sync":
    client = guard(ollama.Client(host=URL, timeout=2))
    r = client.generate(model="standin", prompt="hello", options={"num_predict": 3})
    out = {"text": r["response"], "actions": [x.action for x in client.restarts]}
else:
    async def main():
        aclient = aguard(ollama.AsyncClient(host=URL, timeout=2))
        r = await aclient.chat(model="standin", messages=[{"role": "user", "content": "hi"}])
        return {"text": r["message"]["content"], "actions": [x.action for x in aclient.restarts]}
    out = asyncio.run(main())
print(json.dumps(out))
"""


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


def test_app_with_guarded_client_recovers_from_deep_wedges(healthy: Bed, client_wheels):
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
    for kind in ("sync", "async"):
        before = healthy.prop("InvocationID")
        c.sh(f"kill -USR1 $(systemctl show -p MainPID --value {UNIT})", check=True)  # generate hangs from now on
        r = c.run(["python3", "/home/alice/app.py", kind], user="alice", env={"OLLAMACTL_RESTART_BACKOFF": "0"})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["actions"] == ["restarted"] and out["text"], out
        assert healthy.prop("InvocationID") != before
