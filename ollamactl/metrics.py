"""Prometheus metrics, in node_exporter's textfile-collector format.

The watchdog writes them every period to ``metrics_dir/ollamactl.prom``
(default /var/lib/prometheus/node-exporter, which Debian's
prometheus-node-exporter reads), by write-and-rename so that a scrape never
sees half a file; ``ollamactl metrics`` prints the same families for a
one-off scrape.  Names and labels follow Prometheus' conventions: an
``ollamactl_`` prefix, base units (seconds), ``_total`` for counters, a
state as a 0/1 gauge per ``outcome`` label value.  Label values are escaped as
the exposition format requires; ours come from the config's grammar anyway.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ollamactl.errors import OllamactlError

FILE_NAME = "ollamactl.prom"
#: Where the watchdog writes under systemd (its RuntimeDirectory=, 0755): node_exporter's directory belongs to
#: another package and is root's, so the watchdog's user cannot write there; ``link_textfile`` (run as root by
#: the unit's ExecStartPre=+) puts a symlink there instead, which node_exporter's textfile collector follows.
RUNTIME_DIR = "/run/ollamactl-metrics"
#: Every outcome a probe can have, so each instance shows all of them (0 or 1): no series appears from nowhere.
OUTCOMES = ("healthy", "busy", "loading", "starting", "stopped", "failed", "down", "wedged", "deep-wedged")
#: How the watchdog's restart attempts ended (the ``outcome`` label of ollamactl_restarts_total).
RESTART_OUTCOMES = ("queued", "skipped", "budget-exhausted", "refused", "failed")
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class InstanceMetrics:
    """What one instance's watch loop knows, for its series."""

    instance: str
    unit: str
    outcome: str | None = None  # the last probe's outcome; None before the first
    failures: int | None = 0  # the current failure streak (consecutive failed probes); None: not kept
    probed_at: float | None = None  # when the last probe began (epoch seconds)
    #: How the watchdog's restart attempts ended, by outcome; None: not kept (a one-off scrape).
    restarts: dict[str, int] | None = field(default_factory=lambda: dict.fromkeys(RESTART_OUTCOMES, 0))
    last_recovery_seconds: float | None = None  # from the last restart until it answered healthily again
    budget_remaining: int | None = None  # restarts the budget allows now (None: not known)


@dataclass
class WatchdogMetrics:
    """The watchdog process itself."""

    started_at: float
    heartbeat: float  # when the last tick of every loop had finished (epoch seconds)
    up: bool = True  # False in the last write, as the watchdog stops


class MetricsWriteError(OllamactlError):
    """The metrics file could not be written; the previous one is left as it was."""

    kind = "metrics-write"


def render(instances: Sequence[InstanceMetrics], watchdog: WatchdogMetrics | None = None) -> str:
    """The exposition-format text of these metrics (each family once, HELP and TYPE first)."""
    out: list[str] = []

    def family(name: str, kind: str, help: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        rows = [(labels, value) for labels, value in samples if value is not None and not math.isnan(value)]
        out.append(f"# HELP {name} {help}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in rows)

    def who(m: InstanceMetrics, **extra: str) -> dict[str, str]:
        return {"instance": m.instance, "unit": m.unit, **extra}

    family(
        "ollamactl_probe_outcome",
        "gauge",
        "1 for the outcome of the instance's last probe, 0 for the others.",
        ((who(m, outcome=o), float(m.outcome == o)) for m in instances if m.outcome for o in OUTCOMES),
    )
    family(
        "ollamactl_probe_consecutive_failures",
        "gauge",
        "Failed probes in a row in the current streak (a restart needs watch_failure_threshold, and proof).",
        ((who(m), float(m.failures)) for m in instances if m.failures is not None),
    )
    family(
        "ollamactl_probe_last_timestamp_seconds",
        "gauge",
        "When the instance's last probe began, seconds since the epoch.",
        ((who(m), m.probed_at) for m in instances if m.probed_at is not None),
    )
    family(
        "ollamactl_restarts_total",
        "counter",
        "Restarts the watchdog asked for, by how they ended: queued, skipped (coalesced), budget-exhausted, "
        "refused (stopped or failed by an admin), failed.",
        ((who(m, outcome=o), float(m.restarts.get(o, 0))) for m in instances if m.restarts for o in RESTART_OUTCOMES),
    )
    family(
        "ollamactl_last_recovery_seconds",
        "gauge",
        "Seconds from the watchdog's last restart of the instance until it was healthy again.",
        ((who(m), m.last_recovery_seconds) for m in instances if m.last_recovery_seconds is not None),
    )
    family(
        "ollamactl_restart_budget_remaining",
        "gauge",
        "Restarts the restart budget still allows in its window.",
        ((who(m), float(m.budget_remaining)) for m in instances if m.budget_remaining is not None),
    )
    if watchdog is not None:
        family(
            "ollamactl_watchdog_up",
            "gauge",
            "1 while the watchdog runs, 0 once it stopped.",
            [({}, float(watchdog.up))],
        )
        family(
            "ollamactl_watchdog_heartbeat_timestamp_seconds",
            "gauge",
            "When every watch loop had last finished a tick, seconds since the epoch (stale: a stuck watchdog).",
            [({}, watchdog.heartbeat)],
        )
        family(
            "ollamactl_watchdog_start_time_seconds",
            "gauge",
            "When the watchdog started, seconds since the epoch.",
            [({}, watchdog.started_at)],
        )
    return "\n".join(out) + "\n"


def write_textfile(directory: str, text: str, name: str = FILE_NAME) -> str:
    """Write ``text`` to ``directory/name`` atomically (a temporary file, then rename); return the path.

    The temporary name does not end in .prom, so the collector never reads it;
    the file is 0644, whatever our umask, so node_exporter's user can.  The
    directory is reached without following any link (``open_directory``): root
    running ``watch`` by hand never writes through a link someone planted on the
    way.  Raises MetricsWriteError (the old file stays as it was).
    """
    path = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        dir_fd = open_directory(directory)
    except FileNotFoundError:
        raise MetricsWriteError(
            f"cannot write metrics to {directory}: it does not exist; set metrics_dir, or let the watchdog's user "
            f"write there (the package grants it on Debian's node-exporter directory)",
            path=directory,
        ) from None
    try:
        base = os.path.basename(tmp)
        try:
            os.unlink(base, dir_fd=dir_fd)  # a leftover of ours (or anything put in its place): never written through
        except FileNotFoundError:
            pass
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.rename(base, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        raise MetricsWriteError(f"cannot write metrics to {path}: {exc.strerror}", path=path) from None
    finally:
        os.close(dir_fd)
    return path


def link_textfile(directory: str, target: str = os.path.join(RUNTIME_DIR, FILE_NAME), name: str = FILE_NAME) -> str:
    """Make ``directory/name`` a symlink to ``target``, as root, without following any link on the way.

    The directory's parents belong to another package's user (Debian's
    /var/lib/prometheus is prometheus's), so each component is opened with
    O_NOFOLLOW from the root down: a component swapped for a link is refused,
    never followed.  An existing ``name`` is replaced only if it is a symlink
    (ours, or a stale one); a regular file someone put there is left alone.
    Returns what was done, for the log.  A missing directory (no
    node_exporter) is no error: nothing to link.
    """
    try:
        fd = open_directory(directory)
    except FileNotFoundError:
        return f"{directory} does not exist (node_exporter not installed): nothing linked"
    try:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISLNK(st.st_mode):
            return f"{os.path.join(directory, name)} exists and is not a link; left alone"
        if st is not None and os.readlink(name, dir_fd=fd) == target:
            return f"{os.path.join(directory, name)} already links to {target}"
        tmp = f".{name}.{os.getpid()}.link"
        try:
            os.unlink(tmp, dir_fd=fd)
        except FileNotFoundError:
            pass
        try:
            os.symlink(target, tmp, dir_fd=fd)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            raise MetricsWriteError(f"cannot link {os.path.join(directory, name)}: {exc.strerror}") from None
        return f"linked {os.path.join(directory, name)} -> {target}"
    finally:
        os.close(fd)


def open_directory(directory: str) -> int:
    """An fd of ``directory``, opened one component at a time from / with O_NOFOLLOW: no link is followed.

    Whoever owns a directory on the way (node_exporter's user, a group member)
    could put a link there to make root write elsewhere; a link, or anything
    but a directory, is refused with MetricsWriteError.  A missing component
    raises FileNotFoundError, for the caller to decide (an error, or nothing to do).
    """
    parts = [p for p in directory.split("/") if p not in ("", ".")]
    if not directory.startswith("/") or ".." in parts:
        raise MetricsWriteError(f"metrics_dir must be an absolute path without '..' (got {directory!r})")
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    here = ""
    try:
        for part in parts:
            here = f"{here}/{part}"
            try:
                nxt = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW|O_DIRECTORY on a link: ENOTDIR
                    why, fix = "is a symbolic link or not a directory", "set metrics_dir to the real directory"
                else:
                    why, fix = f"cannot be opened ({exc.strerror})", "set metrics_dir to a directory root can open"
                raise MetricsWriteError(
                    f"cannot open {directory} without following links: {here} {why}; {fix} (readlink -f shows "
                    "where a link leads; use it only if whoever can change the link is trusted)",
                    path=directory,
                ) from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    """A label value as the exposition format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
