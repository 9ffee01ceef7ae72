"""PID 1's own record of a unit's current invocation, read without D-Bus: may a late detector skip?

systemd (PID 1, as root) keeps ``/run/systemd/units/invocation:UNIT``, a symlink whose target is the
invocation ID of the unit's current run (``unit_export_invocation_id()`` in src/core/unit.c, for
journald).  Measured on Debian 12 (systemd 252) and unstable (257+), in booted containers
(tests/e2e/test_late_detectors.py):

- it is created when a start begins, a few milliseconds before systemd's InactiveExitTimestamp, so its
  own lstat() time is when the current run began (never later than D-Bus says);
- it is removed when the unit stops or fails, and kept as it is across ``daemon-reload`` and
  ``daemon-reexec``.

So a record made after ``observed_at`` proves "a new run of the unit began after you saw the wedge",
which is all a late detector needs to skip (the same test as the D-Bus path's ``started_since``).  A
member cannot forge it: /run, /run/systemd and /run/systemd/units are root's and writable by root
alone (checked on every read), the record must be a symlink owned by root, and nothing is opened or
followed (lstat and readlink only, so no FIFO, no device, no link to chase).  systemd calls these
files internal ("shouldn't be considered API"), so anything unexpected (no record, a different shape,
another owner) means "don't know", and the caller asks PID 1 over D-Bus as before.  Inside a
container whose /run is not the host's PID 1's, there is no record for the unit: D-Bus again.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

UNITS_DIR = "/run/systemd/units"
_ID_RE = re.compile(r"[0-9a-f]{32}")
_UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\@-]{1,255}")


@dataclass(frozen=True, slots=True)
class Invocation:
    """The unit's current run as PID 1 records it."""

    invocation_id: str
    started_at: float  # epoch seconds: when PID 1 made the record, as its start began


def current(unit: str, units_dir: str | None = None) -> Invocation | None:
    """The unit's current invocation from PID 1's record, or None if there is none we can trust."""
    units_dir = units_dir or UNITS_DIR
    if not _UNIT_RE.fullmatch(unit) or unit in (".", ".."):
        return None
    try:
        if not all(_roots_alone(os.lstat(d)) for d in _dirs(units_dir)):
            return None
        path = os.path.join(units_dir, "invocation:" + unit)
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) or st.st_uid != 0:
            return None
        target = os.readlink(path)
    except OSError:  # no record (stopped, failed, not found, no such systemd): ask over D-Bus
        return None
    if not _ID_RE.fullmatch(target):
        return None
    return Invocation(target, st.st_mtime_ns / 1e9)


def started_since(unit: str, t: float, units_dir: str | None = None) -> Invocation | None:
    """The unit's current invocation if PID 1 began it after wall-clock time ``t``; else None (ask D-Bus)."""
    inv = current(unit, units_dir)
    return inv if inv is not None and inv.started_at > t else None


def _dirs(units_dir: str) -> list[str]:
    """``units_dir`` and each directory above it: whoever could write one could swap the record."""
    dirs, path = [], os.path.abspath(units_dir)
    while True:
        dirs.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            return dirs
        path = parent


def _roots_alone(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
