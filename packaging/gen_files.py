#!/usr/bin/env python3
"""Generate ollamactl.1, the bash completion and config.toml from the code itself.

Why generated: the man page and completion are walked from ``cli.COMMANDS`` and
``cli.GLOBAL_OPTIONS`` (the table the parser is built from; the man page lists
each command's JSON fields from its result class in ``ollamactl.models``), and
the config file from ``config.KEYS``, so none of them can drift from what
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
from ollamactl.cli import COMMANDS, DESCRIPTION, GLOBAL_OPTIONS, Command, Option
from ollamactl.config import DEFAULT_CONFIG_FILE, ENV_PREFIX, KEYS
from ollamactl.errors import EXIT_CODES


def _roff(text: str) -> str:
    """Escape text for a roff line: backslashes, hyphens, and leading dots/quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _opt_label(a: Option) -> str:
    names = ", ".join(f"\\fB{_roff(s)}\\fR" for s in a.flags)
    if not a.takes_value:
        return names
    return f"{names} \\fI{_roff(a.metavar)}\\fR"


def _help(a: Option) -> str:
    h = a.help
    if a.required:
        h += " (required)"
    return _roff(h)


def result_fields(name: str) -> list[tuple[str, str, str]]:
    """(field, type, doc) of the result class ``ollamactl.models.<name>``, from its one declaration.

    Uses ``models.fields_doc`` where it exists; else the class's fields, whatever
    declares them (a dataclass, or a pydantic model of either major version).
    """
    import dataclasses

    from ollamactl import models

    cls = getattr(models, name)
    if hasattr(models, "fields_doc"):
        return [(str(n), str(t), str(d)) for n, t, d in models.fields_doc(cls)]
    if dataclasses.is_dataclass(cls):
        return [(f.name, str(f.type), str(f.metadata.get("doc", ""))) for f in dataclasses.fields(cls)]
    declared = getattr(cls, "model_fields", None) or getattr(cls, "__fields__", {})
    return [(n, str(getattr(f, "annotation", getattr(f, "outer_type_", ""))), "") for n, f in declared.items()]


def _nested(fields: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(field, class) of the fields that hold a list of result objects that no command prints alone."""
    printed = set()

    def visit(commands: tuple[Command, ...]) -> None:
        for c in commands:
            printed.add(c.result)
            visit(c.children)

    visit(COMMANDS)
    found = []
    for name, type_, _ in fields:
        m = re.fullmatch(r"tuple\[(\w+), \.\.\.\]", type_)
        if m and m.group(1) not in printed:
            found.append((name, m.group(1)))
    return found


def _type_name(t: str) -> str:
    """A field's type as the JSON reader sees it: string, number, integer, boolean, optional ones with "or null"."""
    names = {"str": "string", "float": "number", "int": "integer", "bool": "boolean", "None": "null"}
    words = [names.get(part.strip(), part.strip()) for part in t.replace("Optional[", "").rstrip("]").split("|")]
    return " or ".join(words)


def man_page() -> str:
    """ollamactl(1) in roff."""
    global_names = {s for a in GLOBAL_OPTIONS for s in a.flags}
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = time.strftime("%Y-%m-%d", time.gmtime(int(epoch))) if epoch else ""
    out = [
        f'.TH OLLAMACTL 1 "{date}" "ollamactl {__version__}" "User Commands"',
        ".SH NAME",
        "ollamactl \\- " + _roff(DESCRIPTION.rstrip(".")),
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
        ".TP",
        "\\fB\\-h\\fR, \\fB\\-\\-help\\fR",
        _roff("show the help of ollamactl or of a command, and exit"),
        ".TP",
        "\\fB\\-\\-version\\fR",
        _roff("print the version and exit"),
    ]
    for a in GLOBAL_OPTIONS:
        out += [".TP", _opt_label(a), _help(a)]
    out.append(".SH COMMANDS")

    def walk(prefix: str, commands: tuple[Command, ...]) -> None:
        for cmd in commands:
            full = f"{prefix} {cmd.name}".strip()
            own = [a for a in cmd.options if not set(a.flags) & global_names]
            synopsis = " ".join(
                f"[{a.flags[0]}{' ' + a.metavar if a.takes_value else ''}]"
                if not a.required
                else f"{a.flags[0]} {a.metavar}"
                for a in own
            )
            if cmd.children:
                synopsis = "{" + ",".join(c.name for c in cmd.children) + "} ..."
            out.append(f'.SS "ollamactl {_roff(full)}"')
            if synopsis:
                out.extend([".B ollamactl " + _roff(full), _roff(synopsis), ".br"])
            out.append(_roff(cmd.description or cmd.help))
            for a in own:
                out.extend([".TP", _opt_label(a), _help(a)])
            if cmd.result:
                out.extend([".PP", _roff(f"With --json, one object with these fields ({cmd.result}):")])
                fields = result_fields(cmd.result)
                for name, type_, doc in fields:
                    out.extend([".TP", f"\\fB{_roff(name)}\\fR ({_roff(_type_name(type_))})", _roff(doc or "-")])
                for name, inner in _nested(fields):  # a list of objects no command prints alone: its fields too
                    out.extend([".PP", _roff(f"Each object in {name} has these fields ({inner}):")])
                    for sub, type_, doc in result_fields(inner):
                        out.extend([".TP", f"\\fB{_roff(sub)}\\fR ({_roff(_type_name(type_))})", _roff(doc or "-")])
            walk(full, cmd.children)

    walk("", COMMANDS)
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
    """A bash completion function with the command tree and options of ``cli.COMMANDS``."""
    nodes: dict[str, tuple[list[str], list[str]]] = {}  # path -> (subcommands, options)
    valued: dict[str, str] = {}  # option -> compgen arguments for its value
    helps = [Option("-h", "--help", action="store_true")]

    def visit(path: str, options: list[Option], children: tuple[Command, ...]) -> None:
        opts = sorted({s for a in options for s in a.flags if s.startswith("--") or len(s) == 2})
        nodes[path] = ([c.name for c in children], opts)
        for a in options:
            if a.takes_value:
                for s in a.flags:
                    if a.choices:
                        valued[s] = "-W " + json.dumps(" ".join(a.choices))
                    elif a.complete:
                        valued[s] = {"file": "-f", "group": "-g"}[a.complete]
                    else:
                        valued.setdefault(s, "")
        for c in children:
            visit(f"{path} {c.name}".strip(), [*helps, *GLOBAL_OPTIONS, *c.options], c.children)

    visit("", [*helps, *GLOBAL_OPTIONS, Option("--version", action="version")], COMMANDS)
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
# bash completion for ollamactl {__version__}; generated from its command table (cli.COMMANDS)
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
