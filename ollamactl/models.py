"""Results returned by the API and printed by ``--json``: each declared once, here.

Each result is a frozen standard-library dataclass whose fields carry their
documentation (``metadata["doc"]``), so that every other form derives from
this one declaration: ``to_dict()`` (what ``--json`` prints and the CLI's text
is made from), ``to_json()`` (stable: sorted keys, the same bytes whatever
pydantic is installed) and ``fields_doc()`` (the man page's field list).
Plain field types only (str, int, float, bool, None).  No pydantic here: it
validates the configuration, where it earns its import; results are built by
ollamactl itself, and neither the CLI nor the watchdog should pay for it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = ["History", "HistoryEntry", "Instances", "ProbeReport", "RestartResult", "Status", "fields_doc"]


def _f(doc: str, default: Any = dataclasses.MISSING) -> Any:
    """A field with its documentation."""
    return dataclasses.field(default=default, metadata={"doc": doc})


class _Result:
    """What every result can do: attribute access (a dataclass), a dict, stable JSON."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what ``--json`` prints)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        """Stable JSON: sorted keys, the same on every Python and pydantic version."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RestartResult(_Result):
    """What ``restart`` did."""

    ok: bool = _f("Always true: a restart that was not done raises an error instead.", True)
    action: str = _f(
        '"restarted" (the API answers again); "queued" with wait=False (the job is queued); "skipped" when '
        "the unit had already started since observed_at (new_invocation_id is that start)."
    )
    unit: str = _f("The unit's primary name, as systemd reports it.")
    reason: str | None = _f("The reason given by the caller (recorded in the journal and the shared history).", None)
    observed_at: float | None = _f("When the caller saw the problem (epoch seconds), if it said so.", None)
    job: str | None = _f("The D-Bus object path of systemd's restart job; null when skipped.", None)
    job_result: str | None = _f('How the restart job ended ("done"); null when queued or skipped.', None)
    old_invocation_id: str | None = _f("The invocation ID of the process that was restarted.", None)
    new_invocation_id: str | None = _f("The invocation ID of the process running now; null when queued.", None)
    job_seconds: float | None = _f("Seconds from queueing the restart job to its end.", None)
    ready_seconds: float | None = _f("Seconds from the job's end until the API answered again.", None)
    api_version: str | None = _f("Ollama's version, as GET /api/version answered after the restart.", None)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Status(_Result):
    """The unit's state as systemd reports it, and whether the API answers."""

    healthy: bool = _f("Active and answering: what ``ollamactl status`` exits 0 for.")
    unit: str = _f("The unit's primary name, as systemd reports it.")
    load_state: str = _f("systemd's LoadState: loaded, not-found, masked, ...")
    active_state: str = _f("systemd's ActiveState: active, activating, deactivating, inactive, failed.")
    sub_state: str = _f("systemd's SubState: running, auto-restart, dead, ...")
    result: str | None = _f("systemd's Result of the last run: success, exit-code, signal, ...", None)
    main_pid: int | None = _f("The main process's PID (0 when none runs).", None)
    invocation_id: str | None = _f("The current invocation ID (changes with every start).", None)
    active_enter_timestamp: float | None = _f("When the unit last became active (epoch seconds).", None)
    n_restarts: int | None = _f("How often systemd restarted it automatically (NRestarts).", None)
    fragment_path: str | None = _f("The unit file.", None)
    url: str = _f("The Ollama URL that was asked.")
    api_ok: bool = _f("Whether GET /api/version answered.")
    api_version: str | None = _f("Ollama's version, if the API answered.", None)
    api_error: str | None = _f("Why the API did not answer, if it did not.", None)
    instance: str | None = _f("The instance's name ([instances.NAME] in the config), if the unit is one.", None)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeReport(_Result):
    """What ``probe`` saw, and the verdict on it (see ollamactl.verdict)."""

    outcome: str = _f("healthy, busy, loading, starting, stopped, failed, down, wedged, deep-wedged or load-stuck.")
    healthy: bool = _f('outcome is "healthy".')
    exit_code: int = _f("The outcome's exit code (what ``ollamactl probe`` exits with).")
    evidence: str = _f("One line saying what decided the outcome.", "")
    confirmed: bool = _f("A wedge's streak is complete: a restart is called for.", False)
    since: float | None = _f("When that streak began (epoch seconds).", None)
    samples: int = _f("How many rounds of probes the verdict took.", 1)
    url: str = _f("The Ollama URL that was probed.")
    liveness_seconds: float | None = _f("How long GET /api/version took; null if the unit is not active.", None)
    deep_seconds: float | None = _f("The longest of the deep probes (/api/ps, runners' /slots); null if none.", None)
    model: str | None = _f("The model the deep probe was asked to look at, if any.", None)
    detail: str = _f("The liveness probe's error, if any.", "")
    api_version: str | None = _f("Ollama's version, if the API answered.", None)
    unit: str | None = _f("The unit's primary name.", None)
    active_state: str | None = _f("systemd's ActiveState of the unit.", None)
    sub_state: str | None = _f("systemd's SubState of the unit.", None)
    result: str | None = _f("systemd's Result of the unit's last run.", None)
    started_at: float | None = _f("When the current (or last) start began (epoch seconds).", None)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Instances(_Result):
    """What ``instances`` saw: every Ollama instance of the host (one per GPU), each as ``status`` shows it."""

    healthy: bool = _f("Every instance is active and answering: what ``ollamactl instances`` exits 0 for.")
    instances: tuple[Status, ...] = _f(
        "Each instance's status, in the config's order (see status); one whose unit could not be read has "
        'load_state "error" and the reason in api_error.'
    )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, each instance's status as one too."""
        return {"healthy": self.healthy, "instances": [s.to_dict() for s in self.instances]}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry(_Result):
    """One restart decision (see ``History``): who, when, why, what came of it."""

    at: float = _f("When the decision was recorded (epoch seconds).")
    unit: str = _f("The unit it was about.")
    instance: str | None = _f("The instance's name ([instances.NAME] in the config), if the unit is one.", None)
    outcome: str = _f(
        "restarted, queued (the job was queued, not waited for), skipped (the unit had started since the wedge "
        "was seen), or the error that stopped it: budget-exhausted, permission-denied, unit-stopped, ...; "
        'from the shared history always "restarted" (it lists restarts carried out, nothing else).'
    )
    reason: str | None = _f("The reason the restarter gave.", None)
    verdict: str | None = _f("The verdict that called for it (wedged, deep-wedged, load-stuck), if one did.", None)
    evidence: str | None = _f("That verdict's one line of evidence.", None)
    who: str = _f(
        "Who, in words: from journald's trusted fields (user, and the service it ran in), else from the shared "
        'history, marked "(shared history, unverified)".'
    )
    verified: bool = _f("who comes from journald's trusted fields, which the sender cannot set.")
    uid: int | None = _f("The restarter's uid (journald's _UID; or what the shared history says).", None)
    pid: int | None = _f("The restarter's pid (journald's _PID; or what the shared history says).", None)
    comm: str | None = _f("journald's _COMM of the restarter.", None)
    sender_unit: str | None = _f("journald's _SYSTEMD_UNIT of the restarter, e.g. ollamactl-watchdog.service.", None)
    login_uid: int | None = _f("journald's _AUDIT_LOGINUID: who logged in, e.g. before sudo (kernel audit only).", None)
    claimed_uid: int | None = _f("The uid the record itself claims (OLLAMACTL_UID; anyone can write any).", None)
    observed_at: float | None = _f("When the restarter saw the wedge (epoch seconds), if it said.", None)
    recovery_seconds: float | None = _f(
        "Seconds from the restart job until Ollama answered again, as recorded; null where none was.", None
    )
    recovery_note: str = _f("How recovery_seconds was measured, or why there is none.", "")
    old_invocation_id: str | None = _f("The invocation ID of the Ollama process that was replaced.", None)
    new_invocation_id: str | None = _f("The invocation ID of the process after it, where recorded.", None)
    log_command: str | None = _f(
        "The journalctl command that shows what the replaced process (and systemd about it) logged.", None
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class History(_Result):
    """What ``history`` found: every restart decision recorded, oldest first, and where it was read."""

    source: str = _f(
        '"journal" (root, or groups systemd-journal/adm: every decision, who from trusted fields) or '
        '"shared-history" (/run/ollamactl/state.json: restarts carried out, who unverified).'
    )
    entries: tuple[HistoryEntry, ...] = _f("The decisions, oldest first, each with the fields of HistoryEntry.")
    unit: str | None = _f("The unit asked about (--unit or an instance's name); null: every unit.", None)
    since: float | None = _f("Only decisions since then (epoch seconds), if asked.", None)
    truncated: bool = _f("Older decisions were left out (a limit was reached): ask with --since.", False)
    note: str = _f("What the source leaves out, and what an admin would see; empty when nothing.", "")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, each entry as one too."""
        return {
            "source": self.source,
            "entries": [e.to_dict() for e in self.entries],
            "unit": self.unit,
            "since": self.since,
            "truncated": self.truncated,
            "note": self.note,
        }


def fields_doc(cls: type) -> list[tuple[str, str, str]]:
    """``(name, type, doc)`` of each field of a result class, in declaration order (for the man page)."""
    return [(f.name, str(f.type), f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]
