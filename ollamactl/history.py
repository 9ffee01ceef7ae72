"""``ollamactl history``: who restarted Ollama, when, why, and what came of it.

Two sources, the first one this user may read:

- the journal (root, groups systemd-journal and adm): every restart decision
  ollamactl recorded (``audit``: OLLAMACTL_EVENT=restart, whatever its
  outcome), with who from journald's trusted fields (_UID, _PID, _COMM,
  _SYSTEMD_UNIT, _AUDIT_LOGINUID: the sender cannot set them), the verdict
  and its evidence, the time to recover (the restart's own figures, or the
  watchdog's OLLAMACTL_EVENT=recovered record) and the invocation that was
  replaced, with the journalctl command that shows what it logged;
- the shared history in the runtime directory (members of the group): the
  restarts carried out, with the uid the restarter wrote there, which any
  member can forge, so it is marked unverified; and a note of what the
  journal would add.

Someone who may read neither gets PermissionDenied (exit 3), with the way in.
Anyone can send a record that looks like ours: the trusted fields say who did.
Every value is hostile text, cleaned and capped (journal.query, text.clean)
before it is kept; numbers and invocation IDs must parse, or are left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ollamactl import journal
from ollamactl._log import RECOVERED_EVENT, RESTART_EVENT
from ollamactl.errors import PermissionDenied, RuntimeDirError
from ollamactl.models import History, HistoryEntry
from ollamactl.nss import current_user, user_name
from ollamactl.runtime import MAX_REASON, RuntimeDir, State
from ollamactl.text import clean

if TYPE_CHECKING:
    from ollamactl.config import Config

#: Seconds each journalctl run may take (the query is indexed: it is fast unless something is wrong).
JOURNAL_TIMEOUT = 15.0
#: Fields read from each record: journald's trusted ones, then what ollamactl wrote (controller.restart, watch).
FIELDS = (
    "_BOOT_ID",
    "_UID",
    "_PID",
    "_COMM",
    "_SYSTEMD_UNIT",
    "_AUDIT_LOGINUID",
    "OLLAMACTL_EVENT",
    "OLLAMACTL_OUTCOME",
    "OLLAMACTL_UNIT",
    "OLLAMACTL_REASON",
    "OLLAMACTL_VERDICT",
    "OLLAMACTL_EVIDENCE",
    "OLLAMACTL_UID",
    "OLLAMACTL_OBSERVED_AT",
    "OLLAMACTL_OLD_INVOCATION",
    "OLLAMACTL_NEW_INVOCATION",
    "OLLAMACTL_JOB_SECONDS",
    "OLLAMACTL_READY_SECONDS",
    "OLLAMACTL_RECOVERY_SECONDS",
)
#: Outcomes that restarted something (a job was queued).
RESTARTS = frozenset({"restarted", "queued"})
#: journalctl --invocation= came with systemd 257 (its NEWS); before it, the same matches spelled out.
INVOCATION_OPTION_SINCE = 257
NO_LOGIN_UID = 4294967295  # _AUDIT_LOGINUID of a process no login started
_MAX_WORD = 64  # an outcome, a verdict, a command name: one word


async def read_history(
    cfg: Config,
    *,
    since: float | None = None,
    every_unit: bool = False,
    timeout: float = JOURNAL_TIMEOUT,
    run: journal.Runner | None = None,
) -> History:
    """The restart decisions about ``cfg.unit`` (every unit with ``every_unit``) since ``since``, oldest first.

    From the journal when this user may read it, else from the shared
    history; raises PermissionDenied (not a member, no journal) or
    RuntimeDirError (the runtime directory is missing or unsafe, no journal).
    ``run`` runs journalctl (journal.run_journalctl; a fake in tests).
    """
    run = run or journal.run_journalctl
    unit = None if every_unit else cfg.unit
    matches = [
        f"SYSLOG_IDENTIFIER={journal.IDENTIFIER}",
        f"OLLAMACTL_EVENT={RESTART_EVENT}",
        f"OLLAMACTL_EVENT={RECOVERED_EVENT}",
    ]
    if unit is not None:
        matches.append(f"OLLAMACTL_UNIT={unit}")
    found = await journal.query(matches, FIELDS, since=since, limit=journal.MAX_RECORDS, timeout=timeout, run=run)
    names = {inst.unit: inst.name for inst in cfg.instances}
    if found.readable:
        records = [r for r in found.entries if since is None or _at(r) >= since]
        version = None
        if any(r.get("OLLAMACTL_OUTCOME") in RESTARTS and _invocation(r, "OLD") for r in records):
            version = await journal.systemd_version(timeout=timeout, run=run)
        note = (
            f"only the newest {journal.MAX_RECORDS} records were read; ask for older ones with --since"
            if found.truncated
            else ""
        )
        entries = tuple(from_journal(records, names, version))
        return History(source="journal", entries=entries, unit=unit, since=since, truncated=found.truncated, note=note)
    state = _shared_history(cfg, found.problem)
    entries = tuple(from_shared(state, names, unit, since))
    return History(
        source="shared-history", entries=entries, unit=unit, since=since, note=member_note(found.problem, cfg)
    )


def member_note(problem: str, cfg: Config) -> str:
    """What a reader of the shared history is told: why not the journal, what it leaves out, where the rest is."""
    return (
        f"{problem}: shown is the shared history ({cfg.runtime_dir}/state.json), which lists only the restarts "
        "carried out, with who as the restarter wrote it (unverified: any member can write that file). "
        "An admin (sudo ollamactl history, or a member of group systemd-journal or adm) sees from the journal "
        "every decision, also those that restarted nothing (skipped, refused, over budget), who as journald saw "
        "it, the verdict and its evidence, the time to recover, and the journalctl command that shows what "
        "Ollama logged before each restart."
    )


def _shared_history(cfg: Config, problem: str) -> State:
    """The shared history, for a user who may not read the journal; the errors say both ways in."""
    runtime = RuntimeDir(Path(cfg.runtime_dir), cfg.group)
    try:
        runtime.check_writable()  # opens and verifies the directory: members (and root) only
    except PermissionDenied as err:
        fix = f"sudo usermod -aG {cfg.group} {current_user() or '$USER'}"
        raise PermissionDenied(
            f"cannot read the restart history: {problem}, and {runtime.path} is only for group {cfg.group}; "
            f"ask an admin (sudo ollamactl history), or to add you to the group: {fix}",
            path=str(runtime.path),
            group=cfg.group,
            fix=fix,
        ) from err
    except RuntimeDirError as err:
        raise RuntimeDirError(f"cannot read the restart history: {problem}, and {err.message}", **err.details) from err
    return runtime.read_state()


def from_shared(state: State, names: dict[str, str], unit: str | None, since: float | None) -> list[HistoryEntry]:
    """The shared history's restarts as entries (parse_restart has validated each one already)."""
    out = []
    for r in state.restarts:
        if (unit is not None and r.unit != unit) or (since is not None and r.at < since):
            continue
        out.append(
            HistoryEntry(
                at=r.at,
                unit=r.unit,
                instance=names.get(r.unit),
                outcome="restarted",
                reason=None if r.reason is None else clean(r.reason, MAX_REASON),
                who=f"{_user(r.uid)} (shared history, unverified)",
                verified=False,
                uid=r.uid,
                pid=r.pid,
                recovery_note="not recorded in the shared history",
            )
        )
    return out


def from_journal(records: list[dict[str, str]], names: dict[str, str], version: int | None) -> list[HistoryEntry]:
    """The restart decisions among ``records`` (oldest first), each with its recovery where one was recorded."""
    recovered = [r for r in records if r.get("OLLAMACTL_EVENT") == RECOVERED_EVENT]
    out = []
    for r in records:
        unit, outcome = r.get("OLLAMACTL_UNIT"), r.get("OLLAMACTL_OUTCOME")
        if r.get("OLLAMACTL_EVENT") != RESTART_EVENT or not unit or not outcome:
            continue
        uid, login, claimed = _int(r.get("_UID")), _int(r.get("_AUDIT_LOGINUID")), _int(r.get("OLLAMACTL_UID"))
        old = _invocation(r, "OLD")
        seconds, note = _recovery(r, outcome, old, recovered)
        out.append(
            HistoryEntry(
                at=_at(r),
                unit=unit,
                instance=names.get(unit),
                outcome=clean(outcome, _MAX_WORD),
                reason=r.get("OLLAMACTL_REASON"),
                verdict=clean(r["OLLAMACTL_VERDICT"], _MAX_WORD) if r.get("OLLAMACTL_VERDICT") else None,
                evidence=r.get("OLLAMACTL_EVIDENCE"),
                who=_who(uid, r.get("_SYSTEMD_UNIT"), login, claimed),
                verified=uid is not None,
                uid=uid,
                pid=_int(r.get("_PID")),
                comm=clean(r["_COMM"], _MAX_WORD) if r.get("_COMM") else None,
                sender_unit=r.get("_SYSTEMD_UNIT"),
                login_uid=login if login != NO_LOGIN_UID else None,
                claimed_uid=claimed,
                observed_at=_float(r.get("OLLAMACTL_OBSERVED_AT")),
                recovery_seconds=seconds,
                recovery_note=note,
                old_invocation_id=old,
                new_invocation_id=_invocation(r, "NEW"),
                log_command=log_command(old, version) if old and outcome in RESTARTS else None,
            )
        )
    return out


def _recovery(
    r: dict[str, str], outcome: str, old: str | None, recovered: list[dict[str, str]]
) -> tuple[float | None, str]:
    """The recorded time to recover after the restart ``r``, and how it was measured (or why there is none).

    A restart that waited recorded its own (job, then API); the watchdog's,
    which does not wait, is followed by its "recovered" record: the same
    process (journald's _PID on the same boot) naming the invocation it replaced.
    """
    if outcome not in RESTARTS:
        return None, "nothing was restarted"
    job, ready = _float(r.get("OLLAMACTL_JOB_SECONDS")), _float(r.get("OLLAMACTL_READY_SECONDS"))
    if outcome == "restarted" and job is not None and ready is not None:
        return round(job + ready, 3), "from the restart job until Ollama's API answered again (the restart waited)"
    if outcome == "restarted":
        return None, "not recorded with this restart"
    same = (r.get("_BOOT_ID"), r.get("_PID"), r.get("OLLAMACTL_UNIT"), old)
    if old is not None and r.get("_PID") is not None:
        for rec in recovered:
            mine = (rec.get("_BOOT_ID"), rec.get("_PID"), rec.get("OLLAMACTL_UNIT"), _invocation(rec, "OLD")) == same
            seconds = _float(rec.get("OLLAMACTL_RECOVERY_SECONDS"))
            if mine and _at(rec) >= _at(r) and seconds is not None:
                return seconds, "from the restart job until the watchdog's next healthy probe"
    return None, (
        "not recorded: the restart was not waited for (--no-wait), and its restarter logged no healthy probe "
        "after it (the watchdog logs one when Ollama is healthy again)"
    )


def log_command(invocation: str, version: int | None) -> str:
    """The journalctl command that shows what an invocation of a unit logged, and systemd and journald about it.

    ``--invocation=`` on systemd 257 and later; before it (Debian 12 has 252)
    the very matches that option adds, spelled out, which work everywhere.
    """
    if version is not None and version >= INVOCATION_OPTION_SINCE:
        return f"journalctl --invocation={invocation}"
    return (
        f"journalctl _SYSTEMD_INVOCATION_ID={invocation} + OBJECT_SYSTEMD_INVOCATION_ID={invocation} "
        f"+ INVOCATION_ID={invocation}"
    )


def _who(uid: int | None, sender_unit: str | None, login: int | None, claimed: int | None) -> str:
    """Who sent a record, from journald's trusted fields: e.g. "ollamactl (ollamactl-watchdog.service)"."""
    if uid is None:  # journald always adds _UID: a record without one is not what it seems
        return "unknown (journald gave no _UID)"
    extras = []
    if sender_unit and sender_unit.endswith(".service"):
        extras.append(sender_unit)
    if login is not None and login not in (uid, NO_LOGIN_UID):
        extras.append(f"logged in as {_user(login)}")
    if claimed is not None and claimed != uid:
        extras.append(f"claims to be {_user(claimed)}")
    return _user(uid) + (f" ({', '.join(extras)})" if extras else "")


def _user(uid: int) -> str:
    name = user_name(uid)
    return clean(name, _MAX_WORD) if name is not None else f"uid {uid}"


def _at(r: dict[str, str]) -> float:
    return int(r["__REALTIME_TIMESTAMP"]) / 1e6


def _int(value: str | None) -> int | None:
    """A uid or pid as journald or the sender wrote it; None unless it is a plain number that fits."""
    if value is None or not (value.isascii() and value.isdigit() and len(value) <= 10):
        return None
    n = int(value)
    return n if n <= NO_LOGIN_UID else None


def _float(value: str | None) -> float | None:
    """Seconds or a time as the sender wrote it; None unless finite, not negative and not absurd."""
    if value is None or len(value) > 32:
        return None
    try:
        n = float(value)
    except ValueError:
        return None
    return n if math.isfinite(n) and 0 <= n < 1e11 else None


def _invocation(r: dict[str, str], which: str) -> str | None:
    """OLLAMACTL_OLD_INVOCATION / _NEW_INVOCATION, if it is an invocation ID (32 hex digits), else None."""
    value = r.get(f"OLLAMACTL_{which}_INVOCATION")
    return value if journal.is_invocation_id(value) else None
