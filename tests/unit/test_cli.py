"""The CLI's contract without a bus: exit codes, one JSON object, one-line errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ollamactl import __version__
from ollamactl.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def run(*args, env=None):
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "OLLAMACTL_CONFIG": os.devnull}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ollamactl", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_version():
    r = run("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"ollamactl {__version__}")


def test_help_lists_exit_codes():
    out = run("restart", "--help").stdout
    assert "exit codes:" in out and "permission denied" in out and "--no-wait" in out


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["restart", "--timeout", "0"], "--timeout"),
        (["restart", "--timeout", "soon"], "--timeout"),
        (["--unit", "bad name", "restart"], "--unit"),
        (["restart", "--url", "localhost"], "--url"),
        (["frobnicate"], "frobnicate"),
        (["restart", "--bogus"], "--bogus"),
    ],
)
def test_bad_input_is_one_line_naming_the_field_exit_2(args, field):
    r = run(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args", [["restart", "--timeout", "-3", "--json"], ["--json", "--unit", "x@.service", "status"]]
)
def test_json_errors_are_exactly_one_object(args):
    r = run(*args)
    obj = json.loads(r.stdout)
    assert r.returncode == 2 == obj["exit_code"]
    assert obj["ok"] is False and obj["error"] in ("usage", "config") and obj["message"]
    assert r.stdout.count("\n") == 1


def test_bad_environment_value_names_the_variable():
    r = run("restart", env={"OLLAMACTL_HTTP_TIMEOUT": "fast"})
    assert r.returncode == 2 and "OLLAMACTL_HTTP_TIMEOUT" in r.stderr and "http_timeout" in r.stderr


def test_no_bus_gives_bus_unavailable_code_quickly(tmp_path):
    t0 = time.monotonic()
    r = run("restart", "--json", env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/nowhere"})
    obj = json.loads(r.stdout)
    assert r.returncode == 5 == obj["exit_code"] and obj["error"] == "bus-unavailable"
    assert time.monotonic() - t0 < 10


def test_parser_has_documented_commands():
    parser = build_parser()
    assert parser.parse_args(["restart", "--no-wait"]).no_wait is True
    assert parser.parse_args(["status", "--json"]).json is True
    assert parser.parse_args(["--json", "status"]).json is True


@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "1e400", "0001-01-01", "yesterday"])
def test_since_must_be_a_finite_time(since):
    """Old code took nan/inf as a time (every started_since() comparison then false) and crashed on year 1."""
    r = run("restart", f"--since={since}")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--since" in lines[0] and "Traceback" not in r.stderr


def test_since_accepts_epoch_and_iso_8601():
    parser = build_parser()
    assert parser.parse_args(["restart", "--since", "1700000000.5"]).since == 1700000000.5
    assert parser.parse_args(["restart", "--since", "2023-11-14T22:13:20+00:00"]).since == 1700000000.0


def test_errors_on_stderr_are_cleaned(capsys):
    from ollamactl.cli import _fail
    from ollamactl.errors import OllamactlError

    assert _fail(OllamactlError("systemd said \x1b]0;owned\x07 \u202eno"), False) == 1
    assert capsys.readouterr().err == "ollamactl: systemd said \\x1b]0;owned\\x07 \\u202eno\n"


def test_help_lists_the_new_exit_codes_and_the_start_flag():
    out = run("restart", "--help").stdout
    for code, word in ((14, "stopped"), (15, "busy"), (16, "loading"), (17, "failed")):
        assert any(line.strip().startswith(f"{code} ") and word in line for line in out.splitlines()), code
    assert "--start" in out and "TryRestartUnit" in out
    assert build_parser().parse_args(["restart", "--start"]).start is True
    assert build_parser().parse_args(["restart"]).start is False


def _report(**fields):
    base = dict(outcome="deep-wedged", evidence="GET /slots on runner :1 no answer", liveness_seconds=0.002,
                deep_seconds=1.0, samples=9)  # fmt: skip
    return {**base, **fields}


def test_probe_text_prints_the_evidence_with_v():
    from ollamactl.cli import _probe_text

    assert _probe_text(_report()) == "deep-wedged (liveness 0.002s, deep 1.000s, 9 samples)"
    assert _probe_text(_report(), verbose=True).splitlines()[1] == "evidence: GET /slots on runner :1 no answer"


def test_probe_text_of_a_stopped_unit_says_what_to_do_even_without_v():
    from ollamactl.cli import _probe_text

    stopped = dict(outcome="stopped", evidence="start it with: sudo systemctl start x", samples=1)
    text = _probe_text(_report(**stopped, liveness_seconds=None, deep_seconds=None))
    assert text == "stopped: start it with: sudo systemctl start x"
