#!/usr/bin/env python3
"""Generate ollamactl.1, the bash completion and config.toml from the code itself.

Why generated: the man page and completion are walked from ``cli.build_parser()``
and the config file from ``config.KEYS``, so none of them can drift from what
the program accepts.  Run at package build time (debian/rules) as
``PYTHONPATH=. python3 packaging/gen_files.py --out DIR``.  Standard library
plus ollamactl's import-light modules only (no dbus-next, pydantic or loguru).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from ollamactl import __version__
from ollamactl.cli import build_parser
from ollamactl.config import DEFAULT_CONFIG_FILE, ENV_PREFIX, KEYS
from ollamactl.errors import EXIT_CODES


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def _roff(text: str) -> str:
    """Escape text for a roff line: backslashes, hyphens, and leading dots/quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _opt_label(a: argparse.Action) -> str:
    names = ", ".join(f"\\fB{_roff(s)}\\fR" for s in a.option_strings)
    if a.nargs == 0:
        return names
    metavar = a.metavar or (a.dest.upper() if not a.choices else "{" + ",".join(a.choices) + "}")
    return f"{names} \\fI{_roff(str(metavar))}\\fR"


def _help(a: argparse.Action) -> str:
    h = (a.help or "").replace("%(prog)s", "ollamactl")
    if a.required:
        h += " (required)"
    return _roff(h)


def man_page() -> str:
    """ollamactl(1) in roff."""
    parser = build_parser()
    global_opts = _options(parser)
    global_names = {s for a in global_opts for s in a.option_strings}
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = time.strftime("%Y-%m-%d", time.gmtime(int(epoch))) if epoch else ""
    out = [
        f'.TH OLLAMACTL 1 "{date}" "ollamactl {__version__}" "User Commands"',
        ".SH NAME",
        "ollamactl \\- " + _roff((parser.description or "").rstrip(".")),
        ".SH SYNOPSIS",
        ".B ollamactl",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "ollamactl asks systemd over the system D-Bus to restart the unit that runs Ollama, and waits until "
            "Ollama answers again. A polkit rule lets members of one group (ollamactl) use the try-restart verb "
            "(restart only while it runs) on that one unit, and nothing else. The global options may also be "
            "given after the command."
        ),
        ".SH GLOBAL OPTIONS",
    ]
    for a in global_opts:
        out += [".TP", _opt_label(a), _help(a)]
    out.append(".SH COMMANDS")

    def walk(prefix: str, p: argparse.ArgumentParser) -> None:
        for name, help_, sub in _subparsers(p):
            full = f"{prefix} {name}".strip()
            children = _subparsers(sub)
            own = [a for a in _options(sub) if not set(a.option_strings) & global_names]
            synopsis = " ".join(
                f"[{a.option_strings[0]}{'' if a.nargs == 0 else ' ' + str(a.metavar or a.dest.upper())}]"
                if not a.required
                else f"{a.option_strings[0]} {a.metavar or a.dest.upper()}"
                for a in own
            )
            if children:
                synopsis = "{" + ",".join(n for n, _, _ in children) + "} ..."
            out.append(f'.SS "ollamactl {_roff(full)}"')
            if synopsis:
                out.extend([".B ollamactl " + _roff(full), _roff(synopsis), ".br"])
            out.append(_roff(sub.description or help_))
            for a in own:
                out.extend([".TP", _opt_label(a), _help(a)])
            walk(full, sub)

    walk("", parser)
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out += [
        ".SH ENVIRONMENT",
        ".TP",
        f"\\fB{_roff(ENV_PREFIX)}\\fR\\fIKEY\\fR",
        _roff(f"overrides a config key ({', '.join(k.upper() for k in KEYS)}); OLLAMACTL_CONFIG names the file"),
        ".TP",
        "\\fBOLLAMA_HOST\\fR",
        _roff("where Ollama listens, parsed as ollama parses it (default url)"),
        ".TP",
        "\\fBDBUS_SYSTEM_BUS_ADDRESS\\fR",
        _roff("the system bus to use"),
        ".SH FILES",
        ".TP",
        f"\\fI{_roff(str(DEFAULT_CONFIG_FILE))}\\fR",
        _roff("settings, every key shown commented out at its default"),
        ".TP",
        "\\fI/usr/share/polkit\\-1/rules.d/50\\-ollamactl.rules\\fR",
        _roff("the packaged grant: group ollamactl may try-restart ollama.service (never start it)"),
        ".TP",
        "\\fI/etc/polkit\\-1/rules.d/\\fR",
        _roff("where ollamactl policy install writes further grants"),
        ".TP",
        "\\fI/usr/lib/systemd/system/ollama.service.d/ollamactl.conf\\fR",
        _roff("bounds TimeoutStopSec of ollama.service, so a wedged server is killed in seconds"),
        ".TP",
        "\\fI/run/ollamactl/\\fR",
        _roff("restart lock and state shared by the group"),
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBpolkit\\fR(8), \\fBsystemd.service\\fR(5), \\fBsysusers.d\\fR(5)",
    ]
    return "\n".join(out) + "\n"


def bash_completion() -> str:
    """A bash completion function with the command tree and options of the parser."""
    parser = build_parser()
    nodes: dict[str, tuple[list[str], list[str]]] = {}  # path -> (subcommands, options)
    valued: dict[str, str] = {}  # option -> compgen arguments for its value

    def visit(path: str, p: argparse.ArgumentParser) -> None:
        subs = _subparsers(p)
        opts = sorted({s for a in _options(p) for s in a.option_strings if s.startswith("--") or len(s) == 2})
        nodes[path] = ([n for n, _, _ in subs], opts)
        for a in _options(p):
            if a.nargs != 0:
                for s in a.option_strings:
                    if a.choices:
                        valued[s] = "-W " + json.dumps(" ".join(a.choices))
                    elif s == "--config":
                        valued[s] = "-f"
                    elif s == "--group":
                        valued[s] = "-g"
                    else:
                        valued.setdefault(s, "")
        for name, _, sub in subs:
            visit(f"{path} {name}".strip(), sub)

    visit("", parser)
    descend = "\n".join(
        f'            "{path}|{child}") path="{f"{path} {child}".strip()}" ;;'
        for path, (children, _) in nodes.items()
        for child in children
    )
    values = "\n".join(
        f'        {opt}) COMPREPLY=($(compgen {args} -- "$cur")); return ;;' if args else f"        {opt}) return ;;"
        for opt, args in sorted(valued.items())
    )
    words = "\n".join(
        f'        "{path}") words="{" ".join(children + opts)}" ;;' for path, (children, opts) in nodes.items()
    )
    skip = "|".join(sorted(valued))
    return f"""\
# bash completion for ollamactl {__version__}; generated from its argparse parser
# by packaging/gen_files.py (do not edit).
_ollamactl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local path="" words="" w i
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in
            {skip}) ((i++)); continue ;;
        esac
        case "$path|$w" in
{descend}
        esac
    done
    case "$prev" in
{values}
    esac
    case "$path" in
{words}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _ollamactl ollamactl
"""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _key_info(spec: object) -> tuple[object, str]:
    """(default, help) of a config.KEYS entry (a dataclass field with metadata, or a tuple)."""
    if isinstance(spec, tuple):
        return spec[0], str(spec[1])
    return spec.default, str(spec.metadata.get("help", ""))  # type: ignore[attr-defined]


def config_toml() -> str:
    """/etc/ollamactl/config.toml: every key commented out at its built-in default."""
    out = [
        f"# {DEFAULT_CONFIG_FILE}: settings for ollamactl, see ollamactl(1).",
        "# Every key is shown commented out at its built-in default; uncomment to change it.",
        f"# Precedence: this file < {ENV_PREFIX}<KEY> environment variables < command-line flags.",
        "# Values are checked before anything is done; a bad one is reported naming this file and the key.",
    ]
    for key, spec in KEYS.items():
        default, help_ = _key_info(spec)
        if default is None:
            out += ["", f"# {help_}", "# (unset by default; for example:)", f'#{key} = "NAME"']
        else:
            out += ["", f"# {help_}", f"#{key} = {_toml_value(default)}"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="directory to write into")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ollamactl.1").write_text(man_page())
    (a.out / "ollamactl").write_text(bash_completion())
    (a.out / "config.toml").write_text(config_toml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
