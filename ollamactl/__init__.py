"""ollamactl: let non-root users and apps restart a wedged Ollama over D-Bus.

Public API::

    from ollamactl import Controller, AsyncController, OllamactlError
    from ollamactl import HEALTHY, BUSY, LOADING, WEDGED, DEEP_WEDGED, ...  # probe outcomes
    from ollamactl import BudgetExhausted, PermissionDenied, ...  # every error, all OllamactlError

Importing ollamactl imports none of its dependencies (pydantic, loguru,
dbus-next): the controllers and outcomes load on first use.
"""

from __future__ import annotations

from typing import Any

# The errors module is standard library only: import ollamactl (and every error) costs no dependency.
from ollamactl import errors as _errors
from ollamactl.errors import (
    BudgetExhausted,
    BusUnavailable,
    ConfigError,
    OllamactlError,
    PermissionDenied,
    PolkitNotTrusted,
    PolkitUnavailable,
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
    "OllamactlError",
    "PermissionDenied",
    "PolkitNotTrusted",
    "PolkitUnavailable",
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
#: Any other public error errors.py declares (e.g. one added later) is exported too.
_MORE_ERRORS = tuple(
    name
    for name, value in vars(_errors).items()
    if isinstance(value, type) and issubclass(value, OllamactlError) and name not in __all__ and name[0] != "_"
)
__all__ += _MORE_ERRORS


def __getattr__(name: str) -> Any:
    # The controllers pull in dbus-next, the verdict the HTTP client; load them on
    # first use so that `import ollamactl` (and `ollamactl --version`) stay cheap.
    if name in ("Controller", "AsyncController"):
        from ollamactl import controller

        return getattr(controller, name)
    if name in _OUTCOMES:
        from ollamactl import verdict

        return getattr(verdict, name)
    if name in _MORE_ERRORS:
        return getattr(_errors, name)
    raise AttributeError(f"module 'ollamactl' has no attribute {name!r}")
