"""Logging through loguru, without importing it on the CLI's hot path.

loguru costs tens of milliseconds to import.  We log through it when the
application already uses loguru (it is in ``sys.modules``) or when logging was
switched on (``ollamactl -v``, the watchdog); otherwise log calls are free.
"""

from __future__ import annotations

import sys
from typing import Any

_enabled = False


def enable(level: str = "DEBUG") -> None:
    """Send ollamactl's logs to stderr at ``level`` (used by ``-v``)."""
    global _enabled
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level, format="{time:HH:mm:ss.SSS} {level: <7} {message}")
    logger.enable("ollamactl")
    _enabled = True


def log(level: str, message: str, **fields: Any) -> None:
    """Log ``message`` with structured ``fields`` if anyone is listening."""
    if not _enabled and "loguru" not in sys.modules:
        return
    from loguru import logger

    text = message
    if fields:
        text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
    logger.opt(depth=1).bind(**fields).log(level, text)
