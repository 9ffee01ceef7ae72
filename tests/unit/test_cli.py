"""The CLI's contract without a bus: exit codes, one JSON object, one-line errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ollamactl import __version__
from ollamactl.cli import COMMANDS, build_parser, parse_command_line
from ollamactl.errors import UsageError

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


# -- the command table, the import budget, the printing module (issue 9) ------------------------------------------


def _in_subprocess(code, env=None):
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "OLLAMACTL_CONFIG": os.devnull}
    full_env.update(env or {})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_importing_ollamactl_imports_no_dependency_and_exports_every_error():
    import ollamactl
    from ollamactl import errors

    public = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.OllamactlError) and not name.startswith("_")
    }
    assert public <= set(ollamactl.__all__)
    assert all(getattr(ollamactl, name) is getattr(errors, name) for name in public)
    loaded = _in_subprocess(
        "import json, sys, ollamactl; ollamactl.BudgetExhausted; "
        "print(json.dumps([m for m in ('pydantic', 'loguru', 'dbus_next', 'asyncio') if m in sys.modules]))"
    )
    assert loaded == []


def test_restart_imports_neither_pydantic_nor_loguru(tmp_path):
    """The CLI's speed (issue 9 section 3): plain settings are checked without pydantic, the audit without loguru."""
    config = tmp_path / "config.toml"
    config.write_text("max_restarts = 100\nrestart_window = 1\nrestart_backoff = 0\n")
    code = (
        "import json, sys; from ollamactl.cli import main; "
        "rc = main(['restart', '--no-wait', '--timeout', '30', '--unit', 'ollama']); "
        "print(json.dumps([rc, sorted(m for m in ('pydantic', 'loguru') if m in sys.modules)]))"
    )
    env = {"OLLAMACTL_CONFIG": str(config), "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/nowhere"}
    assert _in_subprocess(code, env) == [5, []]  # bus unavailable: everything before the bus was done
    env["OLLAMACTL_HTTP_TIMEOUT"] = "3"  # a string to coerce: pydantic decides, as before
    assert _in_subprocess(code, env) == [5, ["pydantic"]]


def test_admin_cli_and_cli_do_not_import_each_other():
    for module, other in (("admin_cli", "cli"), ("cli", "admin_cli")):
        code = f"import json, sys, ollamactl.{module}; print(json.dumps('ollamactl.{other}' in sys.modules))"
        assert _in_subprocess(code) is False, module  # cli imports admin_cli only to run one of its handlers


def _paths(commands, prefix=()):
    for cmd in commands:
        yield (*prefix, cmd.name), cmd
        yield from _paths(cmd.children, (*prefix, cmd.name))


@pytest.mark.parametrize(
    "argv",
    [
        ["restart", "--no-wait"],
        ["--json", "--unit", "status", "status"],
        ["restart", "--reason", "probe", "--since", "1700000000", "--start", "--timeout", "9"],
        ["probe", "--deep", "--model", "m", "-v"],
        ["watch", "--model", "x"],
        ["policy", "render", "--group", "g", "--verb", "restart", "--verb", "try-restart", "--offline"],
        ["policy", "install", "--group", "g", "--name", "x.rules"],
        ["policy", "show", "--json"],
        ["doctor", "--user", "bob"],
        ["--unit", "watch", "status"],
        ["policy", "show", "--unit", "render"],
    ],
)
def test_the_parser_built_for_argv_parses_it_as_the_whole_parser_does(argv):
    """build_parser(argv) fills in only the commands argv names; the result must not differ."""
    assert vars(build_parser(argv).parse_args(argv)) == vars(build_parser().parse_args(argv))
    assert vars(parse_command_line(argv)) == vars(build_parser().parse_args(argv))


def _choices(parser):
    return sorted(next(a for a in parser._actions if a.dest == "_command").choices)


def test_the_parser_built_for_argv_builds_only_the_commands_it_names():
    """The others cost a run milliseconds (argparse makes a parser for each); --help or a typo lists them all."""
    everything = sorted(cmd.name for cmd in COMMANDS)
    assert _choices(build_parser(["restart", "--no-wait"])) == ["restart"]
    assert _choices(build_parser(["--unit", "status", "restart"])) == ["restart", "status"]
    assert _choices(build_parser(["--help"])) == _choices(build_parser(["restrat"])) == everything
    assert _choices(build_parser()) == everything


def test_a_refused_line_is_worded_by_the_whole_parser():
    """Here "status" is --unit's value: the parser built for the line knows no other command; the error lists all."""
    with pytest.raises(UsageError) as info:
        parse_command_line(["--unit", "status", "restrat"])
    message = info.value.message
    assert "invalid choice: 'restrat'" in message
    assert all(repr(cmd.name) in message for cmd in COMMANDS), message


def test_every_command_has_a_handler_or_children_and_a_known_result_class():
    from ollamactl import models
    from ollamactl.cli import COMMANDS, _handler

    for path, cmd in _paths(COMMANDS):
        assert bool(cmd.handler) != bool(cmd.children), path
        if cmd.handler:
            assert callable(_handler(cmd.handler)), path
        if cmd.result:
            assert isinstance(getattr(models, cmd.result), type), path


def test_the_man_page_lists_each_result_field_from_its_class():
    from tests.unit.test_policy import _gen_files

    man = _gen_files().man_page()
    for name in ("RestartResult", "Status", "ProbeReport"):
        fields = _gen_files().result_fields(name)
        assert fields and f"these fields ({name})" in man
        assert all(f"\\fB{field}\\fR (" in man for field, _, _ in fields), name


class _Tty:
    def __init__(self, tty=True):
        self.tty, self.text, self.encoding = tty, "", "utf-8"

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_line_only_on_a_terminal_and_never_with_json(monkeypatch):
    from ollamactl.output import Progress

    monkeypatch.setattr(sys, "stderr", _Tty(tty=False))
    assert Progress.for_stderr(as_json=False) is None
    monkeypatch.setattr(sys, "stderr", _Tty(tty=True))
    assert Progress.for_stderr(as_json=True) is None
    assert Progress.for_stderr(as_json=False) is not None


def test_progress_line_updates_in_place_with_the_time_spent_and_is_erased():
    from ollamactl.output import Progress

    now = [100.0]
    tty = _Tty()
    p = Progress(tty, clock=lambda: now[0])
    p("stopping ollama.service (SIGKILL in 10s)")
    now[0] += 3.2
    p("stopping ollama.service (SIGKILL in 10s)")
    p("waiting for the API \x1b[2J")
    lines = tty.text.split("\r")[1:]
    assert lines[0] == "stopping ollama.service (SIGKILL in 10s) (0s)"
    assert lines[1] == "stopping ollama.service (SIGKILL in 10s) (3s)"
    assert lines[2].startswith("waiting for the API \\x1b[2J (0s)")  # cleaned, padded over the longer line
    assert len(lines[2]) == len(lines[1]) and "\n" not in tty.text
    p.close()
    assert tty.text.endswith("\r" + " " * len(lines[2].rstrip()) + "\r")


def test_emit_prints_result_objects_from_to_dict(capsys):
    from ollamactl.output import emit

    class Result:
        def to_dict(self):
            return {"b": 1, "a": "\x7f"}

    emit(Result(), True, str)
    emit(Result(), False, lambda d: f"a={d['a']}")
    assert capsys.readouterr().out == '{"a": "\\u007f", "b": 1}\na=\\x7f\n'


@pytest.mark.parametrize("columns", [None, "60", "200", "0", "-5", "wide"])
def test_help_width_is_shutils_without_importing_it(monkeypatch, columns):
    import shutil

    from ollamactl import cli

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setattr(cli, "_width", [])
    assert cli._columns() == shutil.get_terminal_size().columns
    assert "shutil" not in _in_subprocess(
        "import json, sys; from ollamactl.cli import build_parser; build_parser(['restart']); "
        "print(json.dumps(sorted(m for m in ('shutil', 'pydantic') if m in sys.modules)))"
    )


@pytest.mark.parametrize(
    ("tty", "as_json", "hooked"), [(True, False, True), (True, True, False), (False, False, False)]
)
def test_restart_hands_a_progress_line_to_a_controller_that_takes_one(monkeypatch, capsys, tty, as_json, hooked):
    from ollamactl import cli
    from ollamactl.output import Progress

    seen = {}

    class Result:
        def to_dict(self):
            return {"action": "queued", "unit": "u.service", "job": "/j/1"}

    class FakeController:
        def restart(self, reason, *, wait, observed_at, start, progress=None, timeout=None, lock=None):
            seen["progress"] = progress
            if progress is not None:
                progress("stopping u.service")
            return Result()

    monkeypatch.setattr(cli, "controller", lambda args, cfg=None: FakeController())
    monkeypatch.setattr(sys, "stderr", _Tty(tty=tty))
    args = build_parser().parse_args(["restart", "--no-wait"])
    assert cli._cmd_restart(args, as_json) == 0
    assert isinstance(seen["progress"], Progress) is hooked
    if hooked:
        assert sys.stderr.text.startswith("\rstopping u.service (0s)") and sys.stderr.text.endswith("\r")
    assert "u.service" in capsys.readouterr().out
