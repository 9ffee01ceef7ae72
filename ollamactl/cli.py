"""The ``ollamactl`` command: a thin shell over the Python API.

It parses flags, calls Controller, and turns results and typed errors into
text (or one JSON object with ``--json``) and an exit code.  The command line
is declared once, as data (``GLOBAL_OPTIONS`` and ``COMMANDS``): the parser is
built from it, and so are the man page and the bash completion
(packaging/gen_files.py).  Printing goes through ``ollamactl.output``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ollamactl import __version__
from ollamactl.errors import (
    EXIT_CODES,
    EXIT_DOCTOR,
    EXIT_INTERRUPTED,
    EXIT_NOT_ANSWERING,
    OllamactlError,
    UsageError,
)
from ollamactl.output import Progress, emit, say, to_json

if TYPE_CHECKING:
    from ollamactl.config import Config
    from ollamactl.controller import Controller

__all__ = [
    "COMMANDS",
    "GLOBAL_OPTIONS",
    "NOT_REMOTE",
    "Command",
    "Option",
    "build_parser",
    "emit",
    "main",
    "parse_command_line",
    "say",
    "to_json",
]

EPILOG = "exit codes:\n" + "\n".join(f"  {code:<3} {meaning}" for code, meaning in EXIT_CODES)
DESCRIPTION = "Restart a wedged Ollama (ollama.service) without sudo, through systemd and polkit."


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's raw-description formatter, without importing shutil (and bz2, lzma, ...) on every run.

    argparse makes a formatter for each add_argument; its default width comes from
    ``shutil.get_terminal_size``, whose column rule ``_columns`` repeats.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


_width: list[int] = []


def _columns() -> int:
    """Terminal columns as shutil.get_terminal_size() gives them: $COLUMNS, else stdout's terminal, else 80."""
    if not _width:
        import os

        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 0
        _width.append(columns or 80)
    return _width[0]


def _when(text: str) -> float:
    """Epoch seconds, or ISO 8601 (naive times are local); finite, or ArgumentTypeError (a UsageError)."""
    import math
    from datetime import datetime

    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError, OSError):  # OverflowError/OSError: out of the platform's range
            value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"must be epoch seconds or ISO 8601 like 2026-11-27T22:05:00+00:00 (got {text!r})"
        )
    return value


def _seconds(text: str) -> float:
    from ollamactl.config import TIMEOUT_RANGE, in_timeout_range

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})") from None
    if not in_timeout_range(value):
        raise argparse.ArgumentTypeError(f"must be in {TIMEOUT_RANGE} seconds (got {text!r})")
    return value


# -- the command line, declared once -------------------------------------------------------------


class Option:
    """One option: its flags and argparse's keywords, plus how bash completes its value.

    ``complete``: "file" or "group" (compgen -f / -g); choices complete by themselves.
    """

    __slots__ = ("flags", "kwargs", "complete")

    def __init__(self, *flags: str, complete: str = "", **kwargs: Any) -> None:
        self.flags = flags
        self.kwargs = kwargs
        self.complete = complete

    @property
    def help(self) -> str:
        return str(self.kwargs.get("help", ""))

    @property
    def takes_value(self) -> bool:
        return self.kwargs.get("action") not in ("store_true", "store_false", "count", "version")

    @property
    def required(self) -> bool:
        return bool(self.kwargs.get("required", False))

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.kwargs.get("choices") or ())

    @property
    def metavar(self) -> str:
        """What the man page and --help show for the value."""
        if "metavar" in self.kwargs:
            return str(self.kwargs["metavar"])
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        return str(self.kwargs.get("dest") or self.flags[-1].lstrip("-").replace("-", "_")).upper()


class Command:
    """A (sub)command: its help, options, handler, children and the result class it prints.

    ``handler``: "module:function" in the ollamactl package, imported only when the
    command runs; it is called as ``function(args, as_json)`` and returns the exit code.
    ``result``: the name of the class in ``ollamactl.models`` whose ``to_dict()`` it prints
    (its fields are listed in the man page).
    """

    __slots__ = ("name", "help", "description", "options", "handler", "children", "result")

    def __init__(
        self,
        name: str,
        *,
        help: str,
        description: str,
        options: Sequence[Option] = (),
        handler: str = "",
        children: Sequence[Command] = (),
        result: str = "",
    ) -> None:
        self.name, self.help, self.description = name, help, description
        self.options, self.handler, self.children, self.result = tuple(options), handler, tuple(children), result


#: Accepted before and after the command (every (sub)command has them).
GLOBAL_OPTIONS: tuple[Option, ...] = (
    Option("--json", action="store_true", help="print exactly one JSON object on stdout, errors included"),
    Option(
        "--unit",
        metavar="UNIT",
        help="systemd unit, or instance name from the config, to act on (default: ollama.service)",
    ),
    Option(
        "--url",
        metavar="URL",
        help="Ollama's base URL (default: the instance's url, else OLLAMA_HOST: the caller's for ollama.service, "
        "else the unit's own; else http://127.0.0.1:11434)",
    ),
    Option("--config", metavar="FILE", complete="file", help="config file (default: /etc/ollamactl/config.toml)"),
    Option(
        "--host",
        dest="hosts",
        action="append",
        metavar="[USER@]HOST[:PORT]",
        help="run the command on HOST over ssh instead (repeatable: one table, or one JSON object keyed by host; "
        "exit code the worst of the hosts'); the host's own ollamactl and polkit rule decide",
    ),
    Option(
        "--all-hosts",
        action="store_true",
        help="run the command on every host of the config's hosts list (with any --host)",
    ),
    Option("-v", "--verbose", action="store_true", help="log each step to stderr"),
)

_MODEL = Option("--model", metavar="NAME", help="deep-probe only while this model is loaded (default: any)")


def _grant_options(install: bool) -> tuple[Option, ...]:
    from ollamactl.units import GRANTABLE_VERBS

    verbs = GRANTABLE_VERBS  # what policy.make_grant accepts

    opts = (
        Option(
            "--group", required=True, metavar="GROUP", complete="group", help="the group whose members get the grant"
        ),
        Option(
            "--verb",
            dest="verbs",
            action="append",
            choices=verbs,
            metavar="VERB",
            help=f"a verb to grant, repeatable: {', '.join(verbs)} (default: try-restart only, which never "
            "starts a stopped unit; restart, start and reload-or-restart also start it, e.g. for "
            "ollamactl restart --start, which needs restart)",
        ),
        Option(
            "--offline",
            action="store_true",
            help="do not ask systemd whether UNIT is an alias (polkit sees the primary name, so a rule for an "
            "alias grants nothing); by default an alias is refused with its primary name; for a template "
            "(name@.service) one instance is looked up",
        ),
    )
    if install:
        opts += (
            Option(
                "--name",
                metavar="FILE",
                help="file name in /etc/polkit-1/rules.d (default: 50-ollamactl-GROUP-UNIT.rules)",
            ),
        )
    return opts


COMMANDS: tuple[Command, ...] = (
    Command(
        "restart",
        help="restart the unit and wait until Ollama answers",
        description="Ask systemd to restart the unit, then wait until Ollama's API answers.",
        handler="cli:_cmd_restart",
        result="RestartResult",
        options=(
            Option("--reason", metavar="TEXT", help="why (logged with the restart)"),
            Option("--no-wait", action="store_true", help="return once systemd has queued the restart job"),
            Option("--timeout", type=_seconds, metavar="S", help="total seconds for job and readiness (default 90)"),
            Option(
                "--since",
                type=_when,
                metavar="TIME",
                help="when the wedge was seen (epoch seconds or ISO 8601); skip the restart if the unit started since",
            ),
            Option(
                "--start",
                action="store_true",
                help="also start the unit if it is stopped (RestartUnit; without it a stopped unit is refused, "
                "exit 14, and the restart is TryRestartUnit, which never starts a stopped unit); needs a grant of "
                "restart",
            ),
        ),
    ),
    Command(
        "status",
        help="show the unit's state and whether Ollama answers",
        description="Show the unit's state and whether Ollama's API answers. "
        f"Exits {EXIT_NOT_ANSWERING} if the unit is not active or the API does not answer.",
        handler="cli:_cmd_status",
        result="Status",
    ),
    Command(
        "instances",
        help="list the Ollama instances (one per GPU): unit, URL and health",
        description="List every Ollama instance of this host, from the [instances.NAME] tables of the config "
        "(without them, the one unit), with its unit, the URL it listens on (as given, else the OLLAMA_HOST "
        "of the unit's own Environment= and EnvironmentFile=) and whether it is active and answering. Every "
        "command takes an instance's name as --unit. "
        f"Exits {EXIT_NOT_ANSWERING} if any instance is not active or does not answer.",
        handler="cli:_cmd_instances",
        result="Instances",
    ),
    Command(
        "metrics",
        help="print Prometheus metrics for a one-off scrape (the watchdog writes them for node_exporter)",
        description="Probe every instance once and print the metrics the watchdog writes to node_exporter's "
        "textfile directory (metrics_dir), in the exposition format: each instance's probe outcome and when "
        "it was probed, and the restart budget left (shared history; members only). Failure streaks, "
        "restart counters, the last recovery time and the watchdog's own up/heartbeat are the watchdog's: "
        "see its ollamactl.prom.",
        handler="cli:_cmd_metrics",
        options=(
            Option("--deep", action="store_true", help="also check the runners' inference loops"),
            Option(
                "--link",
                action="store_true",
                help="instead (root; the watchdog's unit runs it before it starts): link METRICS_DIR/ollamactl.prom "
                "to the file the watchdog writes, /run/ollamactl-metrics/ollamactl.prom, following no link",
            ),
        ),
    ),
    Command(
        "probe",
        help="judge Ollama: healthy, busy, loading, starting, stopped, failed, down, wedged, deep-wedged"
        " or (--load) load-stuck",
        description="Judge whether Ollama makes progress: GET /api/version, and with --deep GET /api/ps and each "
        "llama-server runner's /slots (read-only: no prompt, no load, no keep-alive), with the journal's access "
        "log as evidence of completed requests. A suspected wedge is sampled again until it is confirmed or "
        "cleared (seconds). -v prints the one line of evidence that decided it. Exits 0 when healthy, else "
        "with the outcome's code. --load MODEL is different: it DISTURBS Ollama on purpose, for a human "
        "checking for a load that never starts (ollama #17408): it asks Ollama to load MODEL (it may load it, "
        "and may evict another loaded model to make room), waits up to load_stuck_after seconds, and judges "
        "the wait: healthy once loaded, load-stuck (exit 19) if no load began while every loaded runner sat "
        "idle, busy while the load waits for a busy model. The watchdog never does this.",
        handler="cli:_cmd_probe",
        result="ProbeReport",
        options=(
            Option("--deep", action="store_true", help="also check the runners' inference loops"),
            _MODEL,
            Option(
                "--load",
                metavar="MODEL",
                help="load MODEL (it may load it, and may evict another model) and judge the wait (see above)",
            ),
        ),
    ),
    Command(
        "history",
        help="who restarted Ollama, when, why, and how long it took to come back",
        description="List every restart decision recorded, oldest first: when, the unit, who, the outcome "
        "(restarted, queued, skipped, or why not: budget-exhausted, permission-denied, ...), the time to "
        "recover, and why (the verdict and its one line of evidence, else the reason given); under a restart, "
        "the journalctl command that shows what the replaced Ollama process logged before it died. Read from "
        "the journal where you may (root, groups systemd-journal and adm), with who from journald's trusted "
        "fields; else from the shared history in /run/ollamactl (members of ollamactl: restarts carried out, "
        "who as the restarter wrote it, marked unverified), with a note of what an admin sees. Without --unit, "
        "every unit.",
        handler="cli:_cmd_history",
        result="History",
        options=(
            Option(
                "--since",
                type=_when,
                metavar="TIME",
                help="only decisions since TIME (epoch seconds or ISO 8601)",
            ),
        ),
    ),
    Command(
        "watch",
        help="probe Ollama in a loop and restart it when it wedges (the watchdog service)",
        description="Sample Ollama every watch_period seconds (the runners' /slots and the journal too, every "
        "watch_deep_every-th period) and restart only a confirmed wedge (see probe) through the coalesced, "
        "budgeted path; busy, loading and starting never count, and a stopped or failed unit is never started. "
        "Logs every decision with its evidence (to the journal when run by systemd). Runs until SIGTERM.",
        handler="cli:_cmd_watch",
        options=(_MODEL,),
    ),
    Command(
        "policy",
        help="show, render or install the polkit rule that grants restarts",
        description="The polkit rule that lets one group restart one unit. "
        "show: the grant in force; render: print a rule; install: write it to /etc/polkit-1/rules.d (root). "
        "The default grant is try-restart only: members restart the unit while it runs and can never start it "
        "once an admin stopped it (not even with busctl). To let them start it too (ollamactl restart --start), "
        "grant restart as well: sudo ollamactl policy install --group ollamactl --verb restart --verb try-restart.",
        children=(
            Command(
                "show",
                help="describe the grant in force: group, unit, verbs, file",
                description="Describe every polkit rule written by ollamactl (in /etc/polkit-1/rules.d and "
                "/usr/share/polkit-1/rules.d): who may do what to which unit, and from which file.",
                handler="admin_cli:_cmd_policy_show",
            ),
            Command(
                "render",
                help="print a polkit rule for a group and unit",
                description="Print an ECMAScript 5 polkit rule that lets members of GROUP use the given verbs on "
                "UNIT (default ollama.service), and nothing else.",
                handler="admin_cli:_cmd_policy_render",
                options=_grant_options(install=False),
            ),
            Command(
                "install",
                help="write that rule to /etc/polkit-1/rules.d (root only)",
                description="Write the rule that render prints to /etc/polkit-1/rules.d atomically (mode 0644); "
                "polkitd picks it up at once. For installs without the Debian package, e.g. with pipx.",
                handler="admin_cli:_cmd_policy_install",
                options=_grant_options(install=True),
            ),
        ),
    ),
    Command(
        "setup",
        help="without the Debian package: put in place what it would (root only)",
        description="For installs from the wheel (pip, pipx) on distributions without the .deb. Puts in place, "
        "from the files the .deb ships: group and user ollamactl (systemd-sysusers), /run/ollamactl "
        "(systemd-tmpfiles), the polkit grant (try-restart of the unit), the unit's TimeoutStopSec drop-in and "
        "the watchdog unit, left disabled; then reloads systemd (which restarts nothing). Idempotent; never "
        "overwrites a file it did not write. --undo removes what it wrote (the group and user stay).",
        handler="admin_cli:_cmd_setup",
        options=(
            Option("--undo", action="store_true", help="remove what setup wrote (refused while the watchdog is on)"),
            Option("--dry-run", action="store_true", help="say what would change, change nothing"),
        ),
    ),
    Command(
        "doctor",
        help="check why you may or may not restart Ollama, and print the fix",
        description="Check, for the calling user, everything a restart depends on: the system bus, the unit, "
        "group membership (through NSS, as polkit sees it), the polkit rule and polkitd's version, polkit's own "
        "verdict (CheckAuthorization, without side effects), /run/ollamactl, the config and Ollama's API. "
        f"Each failed check prints the command that fixes it; exits {EXIT_DOCTOR} if any check failed.",
        handler="admin_cli:_cmd_doctor",
        options=(
            Option(
                "--user",
                metavar="USER",
                help="check for USER instead of yourself (root only); polkit's verdict is then asked about one of "
                "USER's running processes",
            ),
        ),
    ),
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argparse parser of ``COMMANDS``.

    With ``argv``, only the commands named in it are built, with their options and
    children: building every subparser costs a CLI run milliseconds, and parsing
    ``argv`` needs only its own.  Where ``argv`` names none of a level's commands
    (``--help``, a typo), all are listed with their help line.  The error for a line
    it refuses may list too few commands: ``parse_command_line`` words it with the
    whole parser.
    """
    common = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    for opt in GLOBAL_OPTIONS:  # SUPPRESS: a flag given before the command is not reset by the subcommand's copy
        common.add_argument(*opt.flags, default=argparse.SUPPRESS, **opt.kwargs)
    parser = _Parser(
        prog="ollamactl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_Formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"ollamactl {__version__}")
    wanted = None if argv is None else set(argv)
    _add_commands(parser, common, COMMANDS, wanted, "COMMAND")
    return parser


def _add_commands(
    parser: argparse.ArgumentParser,
    common: argparse.ArgumentParser,
    commands: Sequence[Command],
    wanted: set[str] | None,
    metavar: str,
) -> None:
    sub = parser.add_subparsers(dest=f"_{metavar.lower()}", metavar=metavar, parser_class=_Parser)
    sub.required = True
    if wanted is not None and not wanted.isdisjoint(cmd.name for cmd in commands):
        commands = [cmd for cmd in commands if cmd.name in wanted]  # the others cannot be chosen
    for cmd in commands:
        full = wanted is None or cmd.name in wanted
        p = sub.add_parser(
            cmd.name,
            parents=[common] if full else [],
            help=cmd.help,
            description=cmd.description,
            epilog=EPILOG,
            formatter_class=_Formatter,
        )
        if not full:
            continue
        for opt in cmd.options:
            p.add_argument(*opt.flags, **opt.kwargs)
        if cmd.children:
            _add_commands(p, common, cmd.children, wanted, "ACTION")
        else:
            p.set_defaults(handler=cmd.handler)


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed; UsageError if it is not an ollamactl command line.

    The parser is built for ``argv`` (``build_parser``), which parses every line it
    accepts as the whole parser does; a line it refuses is parsed again by the whole
    parser, whose error lists every command.
    """
    try:
        return build_parser(argv).parse_args(argv)
    except UsageError:
        return build_parser().parse_args(argv)


#: Commands that run until stopped: run them on each host itself (its systemd unit), not over --host.
NOT_REMOTE = frozenset({"watch"})


def _remote_command(argv: Sequence[str]) -> list[str]:
    """The command each host runs for ``argv`` (remote.remote_argv), read back as the host's ollamactl will read it.

    remote_argv strips --host and --all-hosts in every spelling argparse accepts; our own
    parser makes sure of it, so no host is asked to go on over ssh, and refuses the
    commands that run until stopped.  UsageError, before any ssh runs, if not.
    """
    from ollamactl.remote import remote_argv

    words = remote_argv(argv)
    args = parse_command_line(words[1:])
    if getattr(args, "hosts", None) or getattr(args, "all_hosts", False):
        raise UsageError("cannot remove --host from the command line for the remote hosts: spell it out as --host")
    if args._command in NOT_REMOTE:
        raise UsageError(f"{args._command} runs until stopped: run it on each host (its systemd unit), not over --host")
    return words


def _handler(name: str) -> Callable[[argparse.Namespace, bool], int]:
    """The function a handler name ("module:function") designates; imports its module."""
    module, _, function = name.partition(":")
    return getattr(__import__(f"ollamactl.{module}", fromlist=[function]), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_list
    try:
        args = parse_command_line(args_list)
        as_json = getattr(args, "json", False)
        if getattr(args, "verbose", False):
            from ollamactl._log import enable

            enable()
        if getattr(args, "hosts", None) or getattr(args, "all_hosts", False):  # checked here, run by each host
            from ollamactl.remote import run_on_hosts

            cfg = _config(args)
            hosts = [
                *(getattr(args, "hosts", None) or []),
                *(cfg.hosts.split() if getattr(args, "all_hosts", False) else []),
            ]
            if not hosts:
                raise UsageError('--all-hosts: the config\'s hosts list is empty (hosts = "gpu1 alice@gpu2")')
            return run_on_hosts(
                hosts,
                _remote_command(args_list),
                as_json,
                verbose=getattr(args, "verbose", False),
                connect_timeout=cfg.ssh_connect_timeout,
                deadline=cfg.remote_deadline,
            )
        _without_gi()
        return _handler(args.handler)(args, as_json)
    except OllamactlError as err:
        return _fail(err, as_json)
    except KeyboardInterrupt:
        return _fail(OllamactlError("interrupted"), as_json, code=EXIT_INTERRUPTED)


def _config(args: argparse.Namespace, isolate: bool = False) -> Config:
    """The config sources plus the flags the user gave."""
    from ollamactl.config import load_config

    flags = {"unit": "--unit", "url": "--url", "timeout": "--timeout", "model": "--model"}
    settings: dict[str, Any] = {k: getattr(args, k, None) for k in flags}
    return load_config(settings, config_file=getattr(args, "config", None), labels=flags, isolate=isolate)


def controller(args: argparse.Namespace, cfg: Config | None = None) -> Controller:
    """A Controller from the config sources plus the flags the user gave (``cfg``, if read already)."""
    from ollamactl.controller import Controller

    return Controller(config=cfg or _config(args))


def _cmd_restart(args: argparse.Namespace, as_json: bool) -> int:
    from ollamactl import late

    cfg = _config(args)
    # A late detector: PID 1's record may answer without D-Bus, after its turn at the lock (see late.py).
    turn = late.run(cfg, args.reason, args.since, wait=not args.no_wait, timeout=cfg.timeout)
    if turn.skipped is not None:
        emit(turn.skipped, as_json, _restart_text)
        return 0
    progress = Progress.for_stderr(as_json)  # on a terminal: one line says what the restart waits for
    try:
        result = controller(args, cfg).restart(
            args.reason, wait=not args.no_wait, observed_at=args.since, start=args.start, progress=progress,
            timeout=turn.timeout, lock=turn.lock,
        )  # fmt: skip
    finally:
        turn.release()
        if progress is not None:
            progress.close()
    emit(result, as_json, _restart_text)
    return 0


def _cmd_status(args: argparse.Namespace, as_json: bool) -> int:
    status = controller(args).status()
    emit(status, as_json, _status_text)
    return 0 if status.healthy else EXIT_NOT_ANSWERING


def _cmd_instances(args: argparse.Namespace, as_json: bool) -> int:
    found = controller(args).instances()
    emit(found, as_json, _instances_text)
    return 0 if found.healthy else EXIT_NOT_ANSWERING


def _cmd_metrics(args: argparse.Namespace, as_json: bool) -> int:
    if args.link:
        import os

        from ollamactl.errors import PermissionDenied
        from ollamactl.metrics import link_textfile

        if os.geteuid() != 0:
            raise PermissionDenied("metrics --link writes to node_exporter's directory: run it as root")
        cfg = _config(args)
        done = link_textfile(cfg.metrics_dir) if cfg.metrics_dir else "metrics_dir is empty: nothing linked"
        print(to_json({"ok": True, "done": done}) if as_json else f"ollamactl: {done}")
        return 0
    text = controller(args).metrics(deep=args.deep)
    if as_json:
        print(to_json({"ok": True, "metrics": text}))
    else:
        sys.stdout.write(text)
    return 0


def _cmd_probe(args: argparse.Namespace, as_json: bool) -> int:
    load = getattr(args, "load", None)
    report = controller(args).probe_load(load) if load else controller(args).probe(deep=args.deep)
    verbose = getattr(args, "verbose", False)
    emit(report, as_json, lambda p: _probe_text(p, verbose))
    return report.exit_code


def _cmd_history(args: argparse.Namespace, as_json: bool) -> int:
    from ollamactl.controller import Controller

    config = _config(args)
    every_unit = config.sources.get("unit", "default") == "default"  # no --unit (nor unit=): every unit
    found = Controller(config=config).history(args.since, every_unit=every_unit)
    emit(found, as_json, _history_text)
    return 0


def _cmd_watch(args: argparse.Namespace, as_json: bool) -> int:
    import asyncio
    import os

    from ollamactl._log import enable
    from ollamactl.controller import AsyncController
    from ollamactl.watch import watch

    config = _config(args, isolate=True)  # keeps pydantic out of this long-running process
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    enable("DEBUG" if getattr(args, "verbose", False) else "INFO", journal=journal)
    actl = AsyncController(config=config)
    # Run by hand on a terminal: one updating line says what it waits for (not under systemd, not with -v,
    # whose log lines go to the same stderr).
    progress = None if journal or getattr(args, "verbose", False) else Progress.for_stderr(as_json)
    try:
        return asyncio.run(watch(actl, progress=progress))
    finally:
        if progress is not None:
            progress.close()


def _without_gi() -> None:
    """Keep dbus-next from importing PyGObject for its unused GLib backend (~25 ms per run).

    Only in this process, which never uses GLib; the library itself leaves
    an application's ``gi`` alone.  Not by importing dbus-next here: a command
    that needs no bus (a late detector's skip) must not pay for it (~40 ms).
    """
    sys.modules.setdefault("gi", None)  # type: ignore[arg-type]  # makes "import gi" raise ImportError


def _fail(err: OllamactlError, as_json: bool, code: int | None = None) -> int:
    data = err.to_dict()
    if code is not None:
        data["exit_code"] = code
    if as_json:
        print(to_json(data))
    else:
        say(f"ollamactl: {err.message}", file=sys.stderr)
    return data["exit_code"]


def _short(inv: str | None) -> str:
    return inv[:12] if inv else "-"


def _restart_text(r: dict[str, Any]) -> str:
    if r["action"] == "skipped":
        return (
            f"not restarted: {r['unit']} already started after the wedge was seen "
            f"(invocation {_short(r['new_invocation_id'])}); Ollama {r['api_version'] or 'not waited for'}"
        )
    if r["action"] == "queued":
        return f"restart of {r['unit']} queued (job {r['job']}); not waiting for it"
    total = (r["job_seconds"] or 0) + (r["ready_seconds"] or 0)
    return (
        f"restarted {r['unit']} in {total:.2f}s (systemd job {r['job_seconds']:.2f}s, "
        f"API answering {r['ready_seconds']:.2f}s later, Ollama {r['api_version']})\n"
        f"invocation {_short(r['old_invocation_id'])} -> {_short(r['new_invocation_id'])}"
    )


def _status_text(s: dict[str, Any]) -> str:
    since = ""
    if s["active_enter_timestamp"]:
        since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["active_enter_timestamp"]))
    pid = f", pid {s['main_pid']}" if s["main_pid"] else ""
    restarts = f", {s['n_restarts']} automatic restarts" if s["n_restarts"] else ""
    api = f"answering (Ollama {s['api_version']})" if s["api_ok"] else f"NOT answering: {s['api_error']}"
    return f"{s['unit']}: {s['active_state']} ({s['sub_state']}){since}{pid}{restarts}\nAPI {s['url']}: {api}"


def _instances_text(found: dict[str, Any]) -> str:
    rows = [("NAME", "UNIT", "URL", "STATE", "API")]
    for s in found["instances"]:
        if s["load_state"] == "error":
            state, api = "?", s["api_error"]
        else:
            state = f"{s['active_state']} ({s['sub_state']})"
            api = f"answering (Ollama {s['api_version']})" if s["api_ok"] else f"NOT answering: {s['api_error']}"
        rows.append((s["instance"] or s["unit"].removesuffix(".service"), s["unit"], s["url"] or "-", state, api))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows)


def _probe_text(p: dict[str, Any], verbose: bool = False) -> str:
    timing = [f"liveness {p['liveness_seconds']:.3f}s"] if p["liveness_seconds"] is not None else []
    if p["deep_seconds"] is not None:
        timing.append(f"deep {p['deep_seconds']:.3f}s")
    if p["samples"] > 1:
        timing.append(f"{p['samples']} samples")
    text = p["outcome"] + (f" ({', '.join(timing)})" if timing else "")
    if verbose and p["evidence"]:
        text += f"\nevidence: {p['evidence']}"
    elif p["outcome"] in ("stopped", "failed") and p["evidence"]:
        text += f": {p['evidence']}"  # what to do about it
    return text


def _history_text(h: dict[str, Any]) -> str:
    """The decisions as a table, oldest first; under a row, its reason (if the verdict is shown) and the
    journalctl command for the replaced process; then what the source leaves out."""
    rows = [("TIME", "UNIT", "WHO", "OUTCOME", "RECOVERED", "WHY")]
    details: list[list[str]] = [[]]
    unrecorded = False
    for e in h["entries"]:
        why = f"{e['verdict']}: {e['evidence'] or '-'}" if e["verdict"] else (e["reason"] or "-")
        if e["recovery_seconds"] is not None:
            recovered = f"{e['recovery_seconds']:.1f}s"
        elif e["outcome"] in ("restarted", "queued"):
            recovered, unrecorded = "?", True
        else:
            recovered = "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        rows.append((when, e["instance"] or e["unit"], e["who"], e["outcome"], recovered, why))
        more = []
        if e["verdict"] and e["reason"] and e["reason"] != f"watch: {e['verdict']}: {e['evidence']}":
            more.append(f"  reason: {e['reason']}")
        if e["log_command"]:
            more.append(f"  what Ollama logged before: {e['log_command']}")
        details.append(more)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for row, more in zip(rows, details, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
        lines.extend(more)
    if len(rows) == 1:
        where = "in the journal" if h["source"] == "journal" else "in the shared history"
        lines = [f"no restart decisions recorded {where}" + (f" about {h['unit']}" if h["unit"] else "")]
    if unrecorded:
        lines.append("?: no time to recover was recorded (see recovery_note in --json)")
    if h["note"]:
        lines.append(f"note: {h['note']}")
    return "\n".join(lines)
