"""ollamactl: let non-root users and apps restart a wedged Ollama over D-Bus.

Public API::

    from ollamactl import Controller, AsyncController, OllamactlError
    from ollamactl import HEALTHY, BUSY, LOADING, WEDGED, DEEP_WEDGED, ...  # probe outcomes
"""

from __future__ import annotations

from typing import Any

from ollamactl.errors import (
    BudgetExhausted,
    BusUnavailable,
    ConfigError,
    NotAnswering,
    OllamactlError,
    PermissionDenied,
    ProbeConfigError,
    RestartFailed,
    RuntimeDirError,
    TimedOut,
    UnitFailed,
    UnitMasked,
    UnitNotFound,
    UnitStopped,
    UsageError,
)

__version__ = "0.1.0"

#: The probe outcomes (ollamactl.verdict), loaded on first use like the controllers.
_OUTCOMES = (
    "HEALTHY",
    "BUSY",
    "LOADING",
    "STARTING",
    "STOPPED",
    "FAILED",
    "DOWN",
    "WEDGED",
    "DEEP_WEDGED",
    "RESTARTABLE",
    "OUTCOMES",
)

__all__ = [
    "AsyncController",
    "BudgetExhausted",
    "BusUnavailable",
    "ConfigError",
    "Controller",
    "NotAnswering",
    "OllamactlError",
    "PermissionDenied",
    "ProbeConfigError",
    "RestartFailed",
    "RuntimeDirError",
    "TimedOut",
    "UnitFailed",
    "UnitMasked",
    "UnitNotFound",
    "UnitStopped",
    "UsageError",
    "__version__",
    *_OUTCOMES,
]


def __getattr__(name: str) -> Any:
    # The controllers pull in dbus-next, the verdict the HTTP client; load them on
    # first use so that `import ollamactl` (and `ollamactl --version`) stay cheap.
    if name in ("Controller", "AsyncController"):
        from ollamactl import controller

        return getattr(controller, name)
    if name in _OUTCOMES:
        from ollamactl import verdict

        return getattr(verdict, name)
    raise AttributeError(f"module 'ollamactl' has no attribute {name!r}")
