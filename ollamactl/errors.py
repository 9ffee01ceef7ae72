"""Typed failures, each with its own exit code and a one-line fix.

The CLI prints ``str(err)`` and exits with ``err.exit_code``; the Python API
raises the same objects, so apps can branch on the class instead of parsing
text.  The exit codes are part of the public interface (see README).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PERMISSION = 3
EXIT_UNIT = 4
EXIT_BUS = 5
EXIT_RESTART_FAILED = 6
EXIT_TIMEOUT = 7
EXIT_BUDGET = 8
EXIT_RUNTIME_DIR = 9
EXIT_NOT_ANSWERING = 10  # also the probe outcome "down"
EXIT_WEDGED = 11
EXIT_DEEP_WEDGED = 12
EXIT_STARTING = 13
EXIT_STOPPED = 14  # probe: stopped; restart: refused, the unit is stopped
EXIT_BUSY = 15
EXIT_LOADING = 16
EXIT_FAILED = 17  # probe: failed; restart: refused, the unit failed
EXIT_URL_UNKNOWN = 18  # the unit's OLLAMA_HOST may be set in a file we cannot read
EXIT_LOAD_STUCK = 19  # probe --load (and the guard): a load that never starts (ollama #17408)
EXIT_DOCTOR = 20
EXIT_REMOTE = 21
EXIT_INTERRUPTED = 130


class OllamactlError(Exception):
    """Base class: a failure the user can meet, with a fix in its message."""

    exit_code = EXIT_ERROR
    kind = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape printed by ``--json``."""
        out: dict[str, Any] = {
            "ok": False,
            "error": self.kind,
            "message": self.message,
            "exit_code": self.exit_code,
        }
        out.update({k: v for k, v in self.details.items() if v is not None})
        return out


class UsageError(OllamactlError):
    """A bad command-line flag or argument."""

    exit_code = EXIT_USAGE
    kind = "usage"


class ConfigError(OllamactlError):
    """A bad configuration value; nothing was done."""

    exit_code = EXIT_USAGE
    kind = "config"


class PermissionDenied(OllamactlError):
    """polkit (or the bus policy) refused the call."""

    exit_code = EXIT_PERMISSION
    kind = "permission-denied"


class UnitNotFound(OllamactlError):
    """systemd has no such unit loaded or on disk."""

    exit_code = EXIT_UNIT
    kind = "unit-not-found"


class UnitMasked(OllamactlError):
    """The unit is masked, so systemd refuses to start it."""

    exit_code = EXIT_UNIT
    kind = "unit-masked"


class BusUnavailable(OllamactlError):
    """The system bus (or systemd on it) cannot be reached."""

    exit_code = EXIT_BUS
    kind = "bus-unavailable"


class PolkitUnavailable(BusUnavailable):
    """polkitd is not on the system bus, so it cannot be asked (and systemd lets only root act)."""

    kind = "polkit-unavailable"


class PolkitNotTrusted(PermissionDenied):
    """polkitd answers this question only for trusted callers (root, or the action's owner)."""

    kind = "polkit-not-trusted"


class RestartFailed(OllamactlError):
    """systemd ran the restart, but the unit did not come back up."""

    exit_code = EXIT_RESTART_FAILED
    kind = "restart-failed"


class TimedOut(OllamactlError):
    """A deadline passed before the step finished."""

    exit_code = EXIT_TIMEOUT
    kind = "timeout"


class BudgetExhausted(OllamactlError):
    """The restart budget is used up; restarting again now could loop."""

    exit_code = EXIT_BUDGET
    kind = "budget-exhausted"


class RuntimeDirError(OllamactlError):
    """/run/ollamactl (lock and restart history) is missing or not writable."""

    exit_code = EXIT_RUNTIME_DIR
    kind = "runtime-dir"


class UnitStopped(OllamactlError):
    """The unit is inactive after a clean stop: an admin stopped it, so it is not ours to start."""

    exit_code = EXIT_STOPPED
    kind = "unit-stopped"


class UnitFailed(OllamactlError):
    """The unit failed (crash, start-limit-hit): a restart would hide why; an admin must look."""

    exit_code = EXIT_FAILED
    kind = "unit-failed"


class UrlUnknown(OllamactlError):
    """An unreadable environment file may set the unit's OLLAMA_HOST: a guessed URL could restart a healthy server."""

    exit_code = EXIT_URL_UNKNOWN
    kind = "url-unknown"


class ProbeConfigError(OllamactlError):
    """A deep probe cannot run as configured (e.g. the model is not installed)."""

    exit_code = EXIT_USAGE
    kind = "probe-config"


#: (exit code, meaning) for the README and ``--help``.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "unexpected error (a bug: please report it)"),
    (EXIT_USAGE, "bad usage or configuration; nothing was done"),
    (EXIT_PERMISSION, "permission denied by polkit or the bus"),
    (EXIT_UNIT, "unit not found or masked"),
    (EXIT_BUS, "system bus or systemd unavailable"),
    (EXIT_RESTART_FAILED, "restart failed: the unit did not come back"),
    (EXIT_TIMEOUT, "timed out"),
    (EXIT_BUDGET, "restart budget used up; the message says when the next restart is allowed"),
    (EXIT_RUNTIME_DIR, "runtime directory /run/ollamactl missing or unsafe (not root:ollamactl 2770)"),
    (EXIT_NOT_ANSWERING, "status: unit not active or API not answering; probe: down (refused, unit active)"),
    (EXIT_WEDGED, "probe: wedged (GET /api/version gets no answer, no request completes)"),
    (EXIT_DEEP_WEDGED, "probe: deep-wedged (/api/version answers, the runner's inference loop does not)"),
    (EXIT_STARTING, "probe: starting (unit activating or within its startup grace)"),
    (EXIT_LOAD_STUCK, "probe --load: load-stuck (the load never started, every loaded runner idle: ollama #17408)"),
    (EXIT_STOPPED, "probe: stopped (an admin stopped the unit); restart: refused, start it or pass --start"),
    (EXIT_BUSY, "probe: busy (slow, but requests make progress)"),
    (EXIT_LOADING, "probe: loading (a model load is in progress, within load_timeout)"),
    (EXIT_FAILED, "probe: failed (the unit failed); restart: refused, the message gives Result and the fix"),
    (EXIT_URL_UNKNOWN, "Ollama's URL cannot be known: an environment file of the unit is unreadable; nothing done"),
    (EXIT_DOCTOR, "doctor: at least one check failed (each prints its fix)"),
    (EXIT_REMOTE, "--host: a host could not be asked (ssh failed, no ollamactl there, or no valid answer)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)
