"""systemd journal output without a new dependency: the native protocol.

A record is one datagram to /run/systemd/journal/socket holding KEY=value
lines (a value with a newline uses the length-prefixed form).  Where there
is no journal, records go to stderr with sd-daemon ``<priority>`` prefixes,
which journald and most log collectors understand.  Every value is cleaned of
control characters first (``text.clean``): some come from outside, and
``journalctl`` would print them to an admin's terminal.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from typing import Any

from ollamactl.text import clean

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "ollamactl"
_MAX_VALUE = 64 * 1024
_MAX_MESSAGE = 4096  # characters of MESSAGE, after cleaning
_MAX_FIELD = 1024  # characters of any other field, after cleaning
_OWN = ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER")
_KEY_RE = re.compile(r"[^A-Z0-9_]")
_PRIORITIES = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def field_name(key: str) -> str:
    """A valid journal field name: upper case letters, digits, underscores, no leading underscore."""
    name = _KEY_RE.sub("_", key.upper()).lstrip("_")
    return (name or "FIELD")[:64]


def encode(fields: dict[str, Any]) -> bytes:
    """The native-protocol datagram for ``fields``."""
    out = bytearray()
    for key, value in fields.items():
        if value is None:
            continue
        data = str(value).encode("utf-8", "replace")[:_MAX_VALUE]
        name = key.encode()
        if b"\n" in data:
            out += name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name + b"=" + data + b"\n"
    return bytes(out)


class Journal:
    """A connectionless writer to journald; falls back to stderr when there is none."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def available(self) -> bool:
        return os.path.exists(self.path)

    def send_record(self, message: str, level: str, extra: dict[str, Any], file: str, line: int, function: str) -> bool:
        """One log record: ``extra`` becomes OLLAMACTL_* fields, the call site CODE_* fields."""
        fields = {f"OLLAMACTL_{k}": v for k, v in extra.items() if not k.startswith("_")}
        fields.update(CODE_FILE=file, CODE_LINE=line, CODE_FUNC=function)
        return self.send(message, _PRIORITIES.get(level, 6), **fields)

    def send(self, message: str, priority: int = 6, **fields: Any) -> bool:
        """Write one record; True if it reached the journal, False if it went to stderr."""
        record = {"MESSAGE": clean(message, _MAX_MESSAGE), "PRIORITY": priority, "SYSLOG_IDENTIFIER": IDENTIFIER}
        record.update({field_name(k): None if v is None else clean(v, _MAX_FIELD) for k, v in fields.items()})
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(encode(record), self.path)
            return True
        except OSError:
            extra = " ".join(f"{k}={v}" for k, v in record.items() if k not in _OWN and v is not None)
            sys.stderr.write(f"<{priority}>{IDENTIFIER}: {record['MESSAGE']}{' ' + extra if extra else ''}\n")
            sys.stderr.flush()
            return False


class JournalSink:
    """A loguru sink: each record becomes a journal entry, its ``extra`` fields prefixed OLLAMACTL_."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal or Journal()

    def __call__(self, message: Any) -> None:
        r = message.record
        self.journal.send_record(r["message"], r["level"].name, r["extra"], r["file"].path, r["line"], r["function"])
