"""ollamactl --host (ollamactl.remote): host specs, ssh's argv, merging, bounds, and a fake ssh on PATH."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ollamactl import cli, remote
from ollamactl.errors import UsageError
from tests.unit.test_units import HOSTS_GOOD as GOOD

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- host specs (grammar: test_units.py)


@pytest.mark.parametrize(("spec", "user", "host", "port"), GOOD)
def test_host_specs_keep_the_spec_as_given(spec, user, host, port):
    h = remote.parse_host(spec)
    assert (h.spec, h.user, h.host, h.port) == (spec, user, host, port)


@pytest.mark.parametrize("spec", ["-oProxyCommand=x", "h;rm", "h h", "[::1]x"])
def test_host_specs_refused_by_the_grammar(spec):
    with pytest.raises(UsageError, match="expected \\[USER@\\]HOST\\[:PORT\\]"):
        remote.parse_host(spec)


def test_duplicate_hosts_run_once_order_kept():
    assert [h.spec for h in remote.parse_hosts(["b", "a", "b"])] == ["b", "a"]


def test_one_bad_host_refuses_the_whole_run(tmp_path, monkeypatch):
    log = fake_ssh(tmp_path, monkeypatch)
    with pytest.raises(UsageError):
        remote.run_hosts(["ok", "h;rm"], remote.remote_argv(["restart"]))
    assert not log.exists(), "ssh ran although a host was refused"


# --------------------------------------------------------------------------- argv


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--host", "h", "restart"], ["restart", "--json"]),
        (["--host=h", "restart", "--json"], ["restart", "--json"]),
        (["restart", "--host", "a", "--host", "b"], ["restart", "--json"]),
        (["--ho", "h", "--hos=x", "status"], ["status", "--json"]),  # argparse abbreviations
        (["--json", "--host", "h", "status", "--unit", "x.service"], ["--json", "status", "--unit", "x.service"]),
        (["restart", "--reason", "--host=x"], ["restart", "--reason", "--json"]),  # argparse too reads an option
        (["restart", "--reason=--host=x"], ["restart", "--reason=--host=x", "--json"]),  # a value, kept
        (["-v", "--host", "h", "restart"], ["-v", "restart", "--json"]),
        (["--all-hosts", "status", "--all-h"], ["status", "--json"]),
    ],
)
def test_remote_argv_strips_host_and_adds_json(argv, words):
    assert remote.remote_argv(argv) == ["ollamactl", *words]


def test_ssh_argv_options_and_quoting():
    h = remote.parse_host("alice@[::1]:2222")
    words = ["ollamactl", "restart", "--reason", "it's; rm -rf / $(id) `x`", "--json"]
    argv = remote.ssh_argv(h, words, connect_timeout=7)
    assert argv[0] == "ssh" and "-T" in argv
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "BatchMode=yes" in opts and "ConnectTimeout=7" in opts
    assert not any("StrictHostKeyChecking" in o for o in opts), "host-key checking must stay the user's"
    assert argv[argv.index("-l") + 1] == "alice" and argv[argv.index("-p") + 1] == "2222"
    dd = argv.index("--")
    assert argv[dd + 1] == "::1"  # the destination, after --
    # ssh joins the words with spaces into one command for the remote shell: it must split back exactly.
    assert shlex.split(" ".join(argv[dd + 2 :])) == words
    assert "-l" not in argv[dd:] and "-p" not in argv[dd:]


def test_ssh_argv_without_user_or_port():
    argv = remote.ssh_argv(remote.parse_host("h1"), ["ollamactl", "status", "--json"])
    assert "-l" not in argv and "-p" not in argv and "ConnectTimeout=10" in argv
    assert argv[argv.index("--") + 1] == "h1"


def test_watch_is_refused_before_any_ssh(tmp_path, monkeypatch, capsys):
    log = fake_ssh(tmp_path, monkeypatch)
    monkeypatch.setenv("OLLAMACTL_CONFIG", os.devnull)
    assert cli.main(["--host", "ok", "--config", os.devnull, "watch"]) == 2
    assert "watch runs until stopped" in capsys.readouterr().err
    assert not log.exists()
    # the command as argparse reads it: not an option's value that happens to be "watch"
    words = cli._remote_command(["--config", "watch", "restart"])
    assert words == ["ollamactl", "--config", "watch", "restart", "--json"]
    assert cli._remote_command(["restart", "--reason", "watch"])[1] == "restart"


# --------------------------------------------------------------------------- answers, merging


def test_merge_worst_exit_code_is_the_highest():
    ok = {"ok": True, "action": "restarted", "unit": "ollama.service", "exit_code": 0}
    denied = {"ok": False, "error": "permission-denied", "message": "no", "exit_code": 3}
    down = {"ok": False, "error": "ssh", "message": "x", "exit_code": remote.EXIT_REMOTE}
    assert remote.merge({"a": ok}) == {"hosts": {"a": ok}, "ok": True, "exit_code": 0}
    assert remote.merge({"a": ok, "b": denied})["exit_code"] == 3
    assert remote.merge({"b": denied, "a": ok})["exit_code"] == 3  # order does not matter
    merged = remote.merge({"a": denied, "b": down, "c": ok})
    assert merged["exit_code"] == remote.EXIT_REMOTE and merged["ok"] is False
    assert remote.merge({"a": {"exit_code": "3"}})["exit_code"] == remote.EXIT_REMOTE  # not an int: failed


def test_classify_uses_the_remote_exit_status():
    h = remote.parse_host("h")
    answer = remote.classify(h, 3, b'{"ok": false, "error": "permission-denied", "exit_code": 0}', b"")
    assert answer["error"] == "permission-denied" and answer["exit_code"] == 3
    ssh = remote.classify(h, 255, b"", b"banner\nssh: connect to host h port 22: Connection refused\n")
    assert ssh["error"] == "ssh" and ssh["exit_code"] == remote.EXIT_REMOTE and "Connection refused" in ssh["message"]
    key = remote.classify(h, 255, b"", b"Host key verification failed.\n")
    assert "accept it once" in key["message"]
    missing = remote.classify(h, 127, b"", b"sh: 1: ollamactl: not found\n")
    assert missing["error"] == "remote-not-installed" and "install" in missing["message"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b'{"a": NaN}',
        b'{"a": 1} {"b": 2}',
        b"\xff\xfe",
        b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
)
def test_bad_answers_become_remote_answer_errors(data):
    entry = remote.classify(remote.parse_host("h"), 0, data, b"")
    assert entry["error"] == "remote-answer" and entry["exit_code"] == remote.EXIT_REMOTE


def test_depth_bound_ignores_brackets_in_strings():
    assert remote.json_depth('{"a": "[[[[{{{{\\"]]]"}') == 1
    deep_in_string = json.dumps({"a": "[" * 1000})
    assert remote.parse_answer(deep_in_string.encode(), "h") == {"a": "[" * 1000}
    assert remote.json_depth("[" * 33 + "]" * 33) == 33


def test_answer_size_bound():
    big = json.dumps({"a": "x" * remote.MAX_ANSWER_BYTES}).encode()
    with pytest.raises(remote.RemoteBadAnswer, match="larger than"):
        remote.parse_answer(big, "h")


def test_table_escapes_what_a_host_sends():
    hostile = {
        "ok": False,
        "error": "x\x1b]0;pwned\x07",
        "message": "line1\nline2 \x1b[2J \u202e",
        "exit_code": 3,
    }
    text = remote.table(
        remote.merge({"h": hostile, "g": {"ok": True, "action": "restarted", "unit": "u", "exit_code": 0}})
    )
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert len(text.splitlines()) == 4  # header, two hosts, summary: no injected newline
    assert "restarted u" in text and "exit code 3" in text


def test_summary_of_status_and_odd_values():
    assert remote.summary({"healthy": True, "unit": "ollama.service", "active_state": "active"}) == (
        "ollama.service healthy (active)"
    )
    assert remote.summary({"action": ["not", "a", "string"], "ok": True}) == "ok"


# --------------------------------------------------------------------------- a fake ssh on PATH

FAKE_SSH = r"""#!{python}
import json, os, shlex, sys, time
argv = sys.argv[1:]
log = {log!r}
with open(log, "a") as f:
    f.write(json.dumps(argv) + "\n")
dd = argv.index("--")
host, words = argv[dd + 1], shlex.split(" ".join(argv[dd + 2:]))
out = sys.stdout
if host == "ok":
    out.write(json.dumps({{"ok": True, "action": "restarted", "unit": "ollama.service", "words": words}}) + "\n")
    sys.exit(0)
if host == "denied":
    out.write(json.dumps({{"ok": False, "error": "permission-denied", "message": "polkit said no \x1b[2J",
                          "exit_code": 3}}) + "\n")
    sys.exit(3)
if host == "down":
    sys.stderr.write("ssh: connect to host down port 22: Connection timed out\n")
    sys.exit(255)
if host == "missing":
    sys.stderr.write("sh: 1: ollamactl: not found\n")
    sys.exit(127)
if host == "hang":
    with open(log + ".pid", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
if host == "flood":
    chunk = "x" * 65536
    while True:
        out.write(chunk)
        out.flush()
sys.exit(99)
"""


def fake_ssh(tmp_path: Path, monkeypatch) -> Path:
    """An ``ssh`` on PATH acting per destination host; it logs each argv (JSON lines) to the returned path."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "ssh.log"
    script = bindir / "ssh"
    script.write_text(FAKE_SSH.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_fake_ssh_many_hosts_merged(tmp_path, monkeypatch):
    log = fake_ssh(tmp_path, monkeypatch)
    argv = ["--host", "ok", "--host", "alice@denied", "--host", "down", "--host", "missing", "restart"]
    result = remote.run_hosts(["ok", "alice@denied", "down", "missing"], remote.remote_argv(argv))
    hosts = result["hosts"]
    assert list(hosts) == ["ok", "alice@denied", "down", "missing"]
    assert hosts["ok"]["exit_code"] == 0 and hosts["ok"]["words"] == ["ollamactl", "restart", "--json"]
    assert hosts["alice@denied"]["error"] == "permission-denied" and hosts["alice@denied"]["exit_code"] == 3
    assert hosts["down"]["error"] == "ssh" and "timed out" in hosts["down"]["message"]
    assert hosts["missing"]["error"] == "remote-not-installed"
    assert result["exit_code"] == remote.EXIT_REMOTE and result["ok"] is False
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 4
    for call in calls:
        assert "BatchMode=yes" in call and "-T" in call and not any("--host" in w for w in call)


def test_fake_ssh_hung_host_killed_at_the_deadline(tmp_path, monkeypatch):
    log = fake_ssh(tmp_path, monkeypatch)
    t0 = time.monotonic()
    result = remote.run_hosts(["ok", "hang"], remote.remote_argv(["status"]), deadline=1.5)
    took = time.monotonic() - t0
    assert took < 5, f"took {took:.1f}s"
    assert result["hosts"]["ok"]["exit_code"] == 0
    assert result["hosts"]["hang"]["error"] == "timeout" and result["hosts"]["hang"]["exit_code"] == 7
    assert result["exit_code"] == 7
    pid = int(Path(f"{log}.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left running


def test_fake_ssh_flood_is_cut_at_the_size_bound(tmp_path, monkeypatch):
    fake_ssh(tmp_path, monkeypatch)
    t0 = time.monotonic()
    result = remote.run_hosts(["flood"], remote.remote_argv(["status"]), deadline=30)
    assert time.monotonic() - t0 < 10
    entry = result["hosts"]["flood"]
    assert entry["error"] == "remote-answer" and "larger than" in entry["message"]


def test_cli_end_to_end_with_fake_ssh(tmp_path, monkeypatch):
    """`ollamactl --host ... restart`: argparse checks the line, the table and the JSON come out, exit the worst."""
    fake_ssh(tmp_path, monkeypatch)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OLLAMACTL_CONFIG": os.devnull}
    base = [sys.executable, "-m", "ollamactl", "--host", "ok", "--host=denied", "restart", "--reason", "it's $(x)"]
    r = subprocess.run([*base, "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert r.stdout.count("\n") == 1
    assert set(out["hosts"]) == {"ok", "denied"} and out["exit_code"] == 3 and out["ok"] is False
    assert out["hosts"]["ok"]["words"] == ["ollamactl", "restart", "--reason", "it's $(x)", "--json"]
    r = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3
    assert r.stdout.splitlines()[0].split() == ["HOST", "EXIT", "RESULT"]
    assert "restarted ollama.service" in r.stdout and "permission-denied: polkit said no" in r.stdout
    assert "\x1b" not in r.stdout
    for spec in ("--host=-oProxyCommand=x", "--host=h;rm"):
        bad = subprocess.run(
            [sys.executable, "-m", "ollamactl", spec, "status"], capture_output=True, text=True, env=env, timeout=60
        )
        assert bad.returncode == 2 and "bad --host" in bad.stderr, bad.stderr


def test_no_hop_check_reads_the_remote_line_as_argparse_does(tmp_path, monkeypatch, capsys):
    """The CLI reads the remote command back with its own parser: no host is asked to go on over ssh."""
    words = cli._remote_command(["--host", "h", "restart", "--reason=--host=x"])  # a value, not an option: fine
    assert words == ["ollamactl", "restart", "--reason=--host=x", "--json"]
    # Should stripping ever miss a spelling, the re-parse refuses the line and nothing runs.
    monkeypatch.setattr(remote, "remote_argv", lambda argv: ["ollamactl", *argv])
    for argv in (["--host", "x", "status"], ["--hos=x", "status"], ["status", "--ho", "x"], ["--all-h", "status"]):
        with pytest.raises(UsageError, match="cannot remove --host"):
            cli._remote_command(argv)
    log = fake_ssh(tmp_path, monkeypatch)
    monkeypatch.setenv("OLLAMACTL_CONFIG", os.devnull)
    assert cli.main(["--host", "ok", "status"]) == 2
    assert "cannot remove --host" in capsys.readouterr().err
    assert not log.exists()


def test_verbose_says_what_each_host_runs(tmp_path, monkeypatch, capsys):
    fake_ssh(tmp_path, monkeypatch)
    words = remote.remote_argv(["--host", "ok", "-v", "status"])
    assert remote.run_on_hosts(["ok"], words, True, verbose=True) == 0
    assert "running on each host: ollamactl -v status --json" in capsys.readouterr().err
    assert remote.run_on_hosts(["ok"], words, True) == 0
    assert "running on each host" not in capsys.readouterr().err
