"""ollamactl: let non-root users and apps restart a wedged Ollama over D-Bus.

Public API::

    from ollamactl import Controller, AsyncController, OllamactlError
"""

from __future__ import annotations

from typing import Any

from ollamactl.errors import (
    BusUnavailable,
    ConfigError,
    NotAnswering,
    OllamactlError,
    PermissionDenied,
    RestartFailed,
    TimedOut,
    UnitMasked,
    UnitNotFound,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncController",
    "BusUnavailable",
    "ConfigError",
    "Controller",
    "NotAnswering",
    "OllamactlError",
    "PermissionDenied",
    "RestartFailed",
    "TimedOut",
    "UnitMasked",
    "UnitNotFound",
    "UsageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The controllers pull in dbus-next; load them on first use so that
    # `import ollamactl` (and `ollamactl --version`) stay cheap.
    if name in ("Controller", "AsyncController"):
        from ollamactl import controller

        return getattr(controller, name)
    raise AttributeError(f"module 'ollamactl' has no attribute {name!r}")
