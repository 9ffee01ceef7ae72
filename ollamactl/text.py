"""Making text from outside safe to print or log.

Strings we did not write ourselves (Ollama's version and error bodies, names,
states and error messages from the system bus, a log field) can carry terminal
escape sequences: ESC ] 0; sets the window title, OSC 52 writes the clipboard,
CSI moves the cursor or hides what follows, and the bidi controls (U+202E ...)
make a line read differently from what it says.  Printed by root, any of them
is an attack on root's terminal.  ``clean`` turns each such character into a
visible escape and caps the length.  Standard library only (no unicodedata
import): the test is ``str.isprintable``.
"""

from __future__ import annotations

#: What ``clean`` puts at the end of a string it shortened.
ELLIPSIS = "..."
#: Default length cap of a cleaned string (escapes included, the marker not).
DEFAULT_LIMIT = 200


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """``text`` as one printable line: unprintable characters escaped, at most ``limit`` characters.

    Escaped (as ``\\x1b``, ``\\u202e``, ``\\U000e0041``) is every character
    ``str.isprintable`` rejects except the ASCII space: Unicode categories Cc
    (C0 controls incl. newline and tab, DEL, C1 controls), Cf (bidi and other
    format controls, zero-width characters, soft hyphen), Cs (lone surrogates,
    which would make ``print`` raise), Co and Cn (private use, unassigned: may be
    controls to some terminal), Zl and Zp (line and paragraph separators) and Zs
    other than the space.  Backslashes are left alone, so a systemd-escaped name
    such as ``a\\x2db.service`` reads as it is.  Beyond ``limit`` characters the
    rest is dropped and ``...`` appended; ``limit=None`` keeps everything.
    Non-str values are converted with ``str`` first.
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        if limit is None or len(s) <= limit:
            return s
        return s[:limit] + ELLIPSIS
    out: list[str] = []
    size = 0
    for ch in s:
        piece = ch if ch.isprintable() else _escape(ch)
        if limit is not None and size + len(piece) > limit:
            out.append(ELLIPSIS)
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def clean_lines(text: str, limit: int | None = None) -> str:
    """Each line of ``text`` cleaned on its own: our own newlines kept, every other control escaped."""
    return "\n".join(clean(line, limit) for line in text.split("\n"))
