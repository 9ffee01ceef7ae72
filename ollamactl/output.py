"""How the command line prints: results, text, errors and the TTY progress line.

Shared by ``cli`` and ``admin_cli`` (neither imports the other for printing).
Standard library plus ``ollamactl.text`` only: every CLI run imports it.
Results are printed from their ``to_dict()`` (or a plain dict), so this module
does not depend on how a result class is declared.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from ollamactl.text import clean, clean_lines


def emit(payload: Any, as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    """Print a result: one JSON object with --json, else ``text(payload)``.

    ``payload`` is a dict, or any result object with ``to_dict()``.
    """
    data = payload if isinstance(payload, dict) else payload.to_dict()
    if as_json:
        print(to_json(data))
    else:
        say(text(data))


def to_json(payload: dict[str, Any]) -> str:
    """One line of JSON with every character outside printable ASCII escaped.

    ensure_ascii escapes C0 controls and everything past U+007F (C1 controls,
    bidi controls, lone surrogates); DEL is ASCII, so it is escaped here.  A raw
    DEL can only stand inside a JSON string, where ``\\u007f`` means the same.
    """
    import json  # only --json runs pay for it

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


class Progress:
    """One updating stderr line saying what a command waits for and for how long.

    Call the instance with a short description of the current wait (e.g.
    ``"stopping ollama.service (SIGKILL in 8s)"``); the line is redrawn with the
    time spent on that step so far.  ``close()`` erases it.  Draws nothing unless
    ``stream`` is a terminal (and never for ``--json``: see ``for_stderr``).
    """

    def __init__(self, stream: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._what = ""
        self._since = 0.0
        self._width = 0

    @classmethod
    def for_stderr(cls, as_json: bool) -> Progress | None:
        """A Progress on stderr if it is a terminal and the output is text, else None."""
        stream = sys.stderr
        isatty = getattr(stream, "isatty", None)
        if as_json or isatty is None or not isatty():
            return None
        return cls(stream)

    def __call__(self, what: str) -> None:
        now = self._clock()
        if what != self._what:
            self._what, self._since = what, now
        self._draw(f"{clean(what, 120)} ({now - self._since:.0f}s)")

    def _draw(self, line: str) -> None:
        pad = max(self._width - len(line), 0)
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()
        self._width = len(line)

    def close(self) -> None:
        """Erase the line (the result follows on a clean line)."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
