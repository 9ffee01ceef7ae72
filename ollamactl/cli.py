"""The ``ollamactl`` command: a thin shell over the Python API.

It parses flags, calls Controller, and turns results and typed errors into
text (or one JSON object with ``--json``) and an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ollamactl import __version__
from ollamactl.errors import EXIT_CODES, EXIT_INTERRUPTED, EXIT_NOT_ANSWERING, OllamactlError, UsageError
from ollamactl.text import clean_lines

if TYPE_CHECKING:
    from ollamactl.config import Config
    from ollamactl.controller import Controller

EPILOG = "exit codes:\n" + "\n".join(f"  {code:<3} {meaning}" for code, meaning in EXIT_CODES)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


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
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be in (0, 86400] seconds (got {text!r})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; also the source of the man page."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print exactly one JSON object on stdout, errors included",
    )
    common.add_argument(
        "--unit", default=argparse.SUPPRESS, metavar="UNIT", help="systemd unit to act on (default: ollama.service)"
    )
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="Ollama's base URL (default: from OLLAMA_HOST, else http://127.0.0.1:11434)",
    )
    common.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="FILE", help="config file (default: /etc/ollamactl/config.toml)"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log each step to stderr"
    )

    parser = _Parser(
        prog="ollamactl",
        description="Restart a wedged Ollama (ollama.service) without sudo, through systemd and polkit.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"ollamactl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = add_command(
        sub,
        common,
        "restart",
        help="restart the unit and wait until Ollama answers",
        description="Ask systemd to restart the unit, then wait until Ollama's API answers.",
    )
    p.add_argument("--reason", metavar="TEXT", help="why (logged with the restart)")
    p.add_argument("--no-wait", action="store_true", help="return once systemd has queued the restart job")
    p.add_argument("--timeout", type=_seconds, metavar="S", help="total seconds for job and readiness (default 90)")
    p.add_argument(
        "--since",
        type=_when,
        metavar="TIME",
        help="when the wedge was seen (epoch seconds or ISO 8601); skip the restart if the unit started since",
    )
    p.add_argument(
        "--start",
        action="store_true",
        help="also start the unit if it is stopped (RestartUnit; without it a stopped unit is refused, exit 14, "
        "and the restart is TryRestartUnit, which never starts a stopped unit); needs a grant of restart",
    )
    p.set_defaults(handler=_cmd_restart)

    p = add_command(
        sub,
        common,
        "status",
        help="show the unit's state and whether Ollama answers",
        description="Show the unit's state and whether Ollama's API answers. "
        f"Exits {EXIT_NOT_ANSWERING} if the unit is not active or the API does not answer.",
    )
    p.set_defaults(handler=_cmd_status)

    p = add_command(
        sub,
        common,
        "probe",
        help="judge Ollama: healthy, busy, loading, starting, stopped, failed, down, wedged or deep-wedged",
        description="Judge whether Ollama makes progress: GET /api/version, and with --deep GET /api/ps and each "
        "llama-server runner's /slots (read-only: no prompt, no load, no keep-alive), with the journal's access "
        "log as evidence of completed requests. A suspected wedge is sampled again until it is confirmed or "
        "cleared (seconds). -v prints the one line of evidence that decided it. Exits 0 when healthy, else "
        "with the outcome's code.",
    )
    p.add_argument("--deep", action="store_true", help="also check the runners' inference loops")
    p.add_argument("--model", metavar="NAME", help="deep-probe only while this model is loaded (default: any)")
    p.set_defaults(handler=_cmd_probe)

    p = add_command(
        sub,
        common,
        "watch",
        help="probe Ollama in a loop and restart it when it wedges (the watchdog service)",
        description="Sample Ollama every watch_period seconds (the runners' /slots and the journal too, every "
        "watch_deep_every-th period) and restart only a confirmed wedge (see probe) through the coalesced, "
        "budgeted path; busy, loading and starting never count, and a stopped or failed unit is never started. "
        "Logs every decision with its evidence (to the journal when run by systemd). Runs until SIGTERM.",
    )
    p.add_argument("--model", metavar="NAME", help="deep-probe only while this model is loaded (default: any)")
    p.set_defaults(handler=_cmd_watch)

    from ollamactl import admin_cli  # policy and doctor: the admin-facing commands

    admin_cli.add_parsers(sub, common, epilog=EPILOG)
    return parser


def add_command(
    sub: Any, common: argparse.ArgumentParser, name: str, *, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand with the global flags, the exit-code table and raw-text help."""
    return sub.add_parser(
        name,
        parents=[common],
        help=help,
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_list
    try:
        args = build_parser().parse_args(args_list)
        as_json = getattr(args, "json", False)
        if getattr(args, "verbose", False):
            from ollamactl._log import enable

            enable()
        _without_gi()
        return args.handler(args, as_json)
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


def controller(args: argparse.Namespace) -> Controller:
    """A Controller from the config sources plus the flags the user gave."""
    from ollamactl.controller import Controller

    return Controller(config=_config(args), plain_results=True)  # it only prints them


def _cmd_restart(args: argparse.Namespace, as_json: bool) -> int:
    result = controller(args).restart(args.reason, wait=not args.no_wait, observed_at=args.since, start=args.start)
    emit(result.to_dict(), as_json, _restart_text)
    return 0


def _cmd_status(args: argparse.Namespace, as_json: bool) -> int:
    status = controller(args).status()
    emit(status.to_dict(), as_json, _status_text)
    return 0 if status.healthy else EXIT_NOT_ANSWERING


def _cmd_probe(args: argparse.Namespace, as_json: bool) -> int:
    report = controller(args).probe(deep=args.deep)
    verbose = getattr(args, "verbose", False)
    emit(report.to_dict(), as_json, lambda p: _probe_text(p, verbose))
    return report.exit_code


def _cmd_watch(args: argparse.Namespace, as_json: bool) -> int:
    import asyncio
    import os

    from ollamactl._log import enable
    from ollamactl.controller import AsyncController
    from ollamactl.watch import watch

    config = _config(args, isolate=True)  # keeps pydantic out of this long-running process
    enable("DEBUG" if getattr(args, "verbose", False) else "INFO", journal=bool(os.environ.get("JOURNAL_STREAM")))
    return asyncio.run(watch(AsyncController(config=config, plain_results=True)))


def _without_gi() -> None:
    """Keep dbus-next from importing PyGObject for its unused GLib backend (~25 ms per run).

    Only in this process, which never uses GLib; the library itself leaves
    an application's ``gi`` alone.
    """
    if "gi" not in sys.modules:
        sys.modules["gi"] = None  # type: ignore[assignment]  # makes "import gi" raise ImportError
        import dbus_next  # noqa: F401

        del sys.modules["gi"]


def emit(payload: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    """Print a result: one JSON object with --json, else ``text(payload)``."""
    if as_json:
        print(to_json(payload))
    else:
        say(text(payload))


def to_json(payload: dict[str, Any]) -> str:
    """One line of JSON with every character outside printable ASCII escaped.

    ensure_ascii escapes C0 controls and everything past U+007F (C1 controls,
    bidi controls, lone surrogates); DEL is ASCII, so it is escaped here.  A raw
    DEL can only stand inside a JSON string, where ``\\u007f`` means the same.
    """
    return json.dumps(payload, sort_keys=True, ensure_ascii=True).replace("\x7f", "\\u007f")


def say(text: str, file: Any = None) -> None:
    """Print human-readable text, each line cleaned of control characters (text.clean_lines).

    The one way the CLI prints text: values in it may come from outside (a
    server's version, the bus's messages), and escape sequences must not reach
    the terminal of whoever runs us (often root).  Characters the terminal's
    encoding lacks become backslash escapes instead of an exception.
    """
    out = sys.stdout if file is None else file
    line = clean_lines(text)
    encoding = getattr(out, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding), file=out)


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
