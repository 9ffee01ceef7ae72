"""The load generator (tests/loadgen.py): bounded, loopback only, and its counts add up against the stand-in."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import loadgen

LOADGEN = Path(loadgen.__file__)
needs_standin = pytest.mark.skipif(
    importlib.util.find_spec("ollama") is None,
    reason="the stand-in fixture needs the ollama client (tests/conftest.py)",
)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:11434", "http://example.com:11434", "https://127.0.0.1:11434", "http://0.0.0.0:11434"]
)
def test_only_loopback_urls_are_accepted(url: str) -> None:
    """It must never load anything but the server under test on this machine."""
    with pytest.raises(ValueError, match="loopback"):
        loadgen.validate(loadgen.LoadSpec(url=url))


@pytest.mark.parametrize(
    "change", [{"clients": 0}, {"seconds": 0}, {"seconds": 1e9}, {"timeout": 0}, {"max_requests": 0}]
)
def test_unbounded_loads_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        loadgen.validate(loadgen.LoadSpec(url="http://127.0.0.1:1", **change))  # type: ignore[arg-type]


def test_percentile_is_nearest_rank() -> None:
    assert loadgen.percentile([], 50) is None
    assert loadgen.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert loadgen.percentile([float(i) for i in range(1, 21)], 95) == 19.0


def test_cli_refuses_a_remote_url_without_connecting() -> None:
    r = subprocess.run(
        [sys.executable, str(LOADGEN), "--url", "http://192.0.2.1:11434", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode == 2 and "loopback" in r.stderr


def test_nothing_listening_is_counted_not_fatal() -> None:
    """Refused connections are failures by kind, and the run still ends on time."""
    t0 = time.monotonic()
    res = loadgen.run(loadgen.LoadSpec(url="http://127.0.0.1:9", clients=2, seconds=0.5, timeout=1))
    s = res.summary()
    assert s["ok"] == 0 and s["failed"] == s["requests"] > 0
    assert set(s["errors"]) == {"refused"}
    assert time.monotonic() - t0 < 3


@needs_standin
def test_keeps_clients_busy_against_the_stand_in(launch) -> None:
    """2 clients on 1 slot: every request succeeds, the queue shows in the latencies."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.01"})
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(LOADGEN), "--url", s.url, "--clients", "2", "--seconds", "1", "--num-predict", "5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert time.monotonic() - t0 < 5
    assert summary["failed"] == 0 and summary["ok"] == summary["requests"] >= 10
    assert summary["p95"] >= summary["p50"] >= 0.05  # 5 tokens, plus waiting for the other client
    assert len([ln for ln in s.gin_lines("/api/generate") if " | 200 | " in ln]) >= summary["ok"] - 1


@needs_standin
def test_max_requests_bounds_the_count(launch) -> None:
    s = launch()
    res = loadgen.run(loadgen.LoadSpec(url=s.url, clients=3, seconds=5, num_predict=1, max_requests=4, stream=True))
    assert res.summary()["requests"] == 4 and res.summary()["ok"] == 4
