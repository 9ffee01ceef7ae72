"""Logging through loguru, without importing it on the CLI's hot path.

loguru costs tens of milliseconds to import.  Ordinary log calls go through
it only when the application already uses loguru (it is in ``sys.modules``)
or logging was switched on (``ollamactl -v``, the watchdog); otherwise they
are free.  Audit records (every restart decision) are always written: to the
journal through a loguru sink that speaks journald's native protocol.
Messages and field values are cleaned of control characters (``text.clean``):
some come from outside (bus errors, a server's answer, a user's reason).
"""

from __future__ import annotations

import sys
from typing import Any

#: OLLAMACTL_EVENT of the audit records ``ollamactl history`` reads: a restart decision (any outcome), and
#: the watchdog's word that Ollama is healthy again after its restart (with the time it took).
RESTART_EVENT = "restart"
RECOVERED_EVENT = "recovered"

_enabled = False
_audit_ready = False
_MESSAGE_LIMIT = 2000  # characters of a log message; values in it come from outside (text.clean)


def enable(level: str = "DEBUG", journal: bool = False) -> None:
    """Send ollamactl's logs to stderr (or, with ``journal``, to the journal) at ``level``."""
    global _enabled, _audit_ready
    from loguru import logger

    from ollamactl.journal import JournalSink

    logger.remove()
    if journal:
        logger.add(JournalSink(), level=level, format="{message}")
    else:
        logger.add(sys.stderr, level=level, format="{time:HH:mm:ss.SSS} {level: <7} {message}")
    logger.enable("ollamactl")
    _enabled = True
    _audit_ready = journal  # the journal sink above already records audit entries


def log(level: str, message: str, **fields: Any) -> None:
    """Log ``message`` with structured ``fields`` if anyone is listening."""
    if not _enabled and "loguru" not in sys.modules:
        return
    from loguru import logger

    from ollamactl.text import clean

    text = clean(message, _MESSAGE_LIMIT)
    if fields:
        text += " " + " ".join(f"{k}={clean(v)}" for k, v in fields.items())
    logger.opt(depth=1).bind(**fields).log(level, text)


def audit(message: str, **fields: Any) -> None:
    """Record a restart decision in the journal, whoever the caller is.

    Where loguru is in use (the watchdog, ``-v``, apps that log with it) the
    record goes through its journal sink.  A plain CLI run writes the very
    same record with the sink's journal writer directly, rather than import
    loguru (tens of milliseconds) after a restart just to send one datagram.
    """
    global _audit_ready
    if "loguru" not in sys.modules and not _enabled:
        from ollamactl.journal import Journal

        caller = sys._getframe(1)
        code = caller.f_code
        Journal().send_record(message, "INFO", fields, code.co_filename, caller.f_lineno, code.co_name)
        return
    from loguru import logger

    if not _audit_ready:
        from ollamactl.journal import JournalSink

        logger.add(JournalSink(), level="INFO", format="{message}", filter=lambda r: r["extra"].get("_audit", False))
        _audit_ready = True
    from ollamactl.text import clean

    logger.opt(depth=1).bind(_audit=True, **fields).info(clean(message, _MESSAGE_LIMIT))
