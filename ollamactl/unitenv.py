"""A unit's environment as its process gets it: where an Ollama instance listens.

One server per GPU means one OLLAMA_HOST per unit, set with ``Environment=`` or
in an ``EnvironmentFile=`` (``/etc/ollama/%i.env`` for a template).  systemd
gives both over D-Bus (the Service's Environment and EnvironmentFiles
properties, specifiers expanded); the files we read ourselves, as systemd
does when it starts the unit: later assignments win, and the files override
``Environment=`` (systemd.exec(5)).

The files are named by root's unit configuration, but we read them with
care anyway: no FIFO or device (O_NONBLOCK, and only a regular file is
read), at most MAX_FILE bytes, and a file we may not read is reported, not
guessed around (set ``url`` for that instance instead).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_FILE = 64 * 1024  # an environment file is a few lines
_KEY_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_KEY_CHARS = _KEY_START | frozenset("0123456789")


@dataclass(frozen=True)
class Found:
    """A variable's value in a unit's environment, where it was set, and what could not be read."""

    value: str | None  # None: not set (as far as we could read)
    where: str  # "Environment=", a file's path, or "" when not set
    problems: tuple[str, ...] = ()  # files that may set it but could not be read
    #: (path, why) of the files read after ``where`` that could not be read: any of them may override the
    #: value (later assignments win), so while there is one, the value the process got cannot be known.
    unknown: tuple[tuple[str, str], ...] = ()


def lookup(name: str, environment: Sequence[str], files: Iterable[tuple[str, bool]]) -> Found:
    """``name``'s value as the unit's process gets it: Environment= first, then each EnvironmentFile= over it.

    ``environment``: the Environment property ("KEY=VALUE" strings, already
    unquoted by systemd); ``files``: the EnvironmentFiles property (path, and
    whether a missing file is fine: the ``-`` prefix).
    """
    value: str | None = None
    where = ""
    for item in environment:
        key, eq, val = item.partition("=")
        if eq and key == name:
            value, where = val, "Environment="
    problems: list[str] = []
    unknown: list[tuple[str, str]] = []  # unreadable since the last file that set it
    for path, _optional in files:
        try:
            assignments = parse(read(path))
        except FileNotFoundError:
            continue  # optional, or the unit cannot start anyway: nothing set there
        except OSError as exc:
            why = exc.strerror or str(exc)
            problems.append(f"cannot read {path}: {why}")
            unknown.append((path, why))
            continue
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
            unknown.append((path, str(exc)))
            continue
        if name in assignments:
            value, where = assignments[name], path
            unknown.clear()  # this file overrides whatever the unreadable ones before it set
    return Found(value, where, tuple(problems), tuple(unknown))


def read(path: str) -> str:
    """A small regular file's text; OSError (FileNotFoundError, PermissionError...) or ValueError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise ValueError(f"larger than {MAX_FILE} bytes; not an environment file")
    return data.decode("utf-8", errors="replace")


def parse(text: str) -> dict[str, str]:
    """KEY=VALUE assignments as systemd reads an environment file (the common subset).

    Blank lines and lines starting with ``#`` or ``;`` are comments; spaces
    around the key and value are dropped; a value in single quotes is taken
    literally, in double quotes with backslash escapes; an unquoted value ends
    a line with ``\\`` to continue on the next.  Lines without a valid key are
    skipped, as systemd skips them.
    """
    out: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        key, eq, rest = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        if not eq or not key or key[0] not in _KEY_START or not _KEY_CHARS.issuperset(key):
            continue
        rest = rest.strip()
        if rest[:1] in ("'", '"'):
            quote, body = rest[0], rest[1:]
            value, closed = _quoted(body, quote)
            while not closed and i < len(lines):  # a quoted value may span lines
                body += "\n" + lines[i]
                i += 1
                value, closed = _quoted(body, quote)
            out[key] = value
            continue
        while rest.endswith("\\") and i < len(lines):
            rest = rest[:-1] + lines[i].strip()
            i += 1
        out[key] = rest
    return out


def _quoted(body: str, quote: str) -> tuple[str, bool]:
    """The value after an opening ``quote`` (backslash escapes inside double quotes), and whether it closed."""
    if quote == "'":
        end = body.find("'")
        return (body, False) if end < 0 else (body[:end], True)
    out, escaped = [], False
    for ch in body:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return "".join(out), True
        else:
            out.append(ch)
    return "".join(out), False
