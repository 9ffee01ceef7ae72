"""Results returned by the API and printed by ``--json``.

pydantic models with plain field types only (str, int, float, bool, None), so
they serialise to byte-identical JSON on pydantic 1.10 and 2.x.
"""

from __future__ import annotations

from ollamactl._pydantic import BaseModel, to_dict, to_json


class _Result(BaseModel):
    def to_dict(self) -> dict:
        return to_dict(self)

    def to_json(self) -> str:
        return to_json(self)


class RestartResult(_Result):
    """What ``restart`` did.

    action: "restarted"; "queued" with wait=False; "skipped" when the unit
    had already started since ``observed_at`` (new_invocation_id is that start).
    """

    ok: bool = True
    action: str
    unit: str
    reason: str | None = None
    observed_at: float | None = None
    job: str | None = None
    job_result: str | None = None
    old_invocation_id: str | None = None
    new_invocation_id: str | None = None
    job_seconds: float | None = None
    ready_seconds: float | None = None
    api_version: str | None = None


class Status(_Result):
    """The unit's state as systemd reports it, and whether the API answers.

    healthy: active and answering, what ``ollamactl status`` exits 0 for.
    """

    healthy: bool
    unit: str
    load_state: str
    active_state: str
    sub_state: str
    result: str | None = None
    main_pid: int | None = None
    invocation_id: str | None = None
    active_enter_timestamp: float | None = None
    n_restarts: int | None = None
    fragment_path: str | None = None
    url: str
    api_ok: bool
    api_version: str | None = None
    api_error: str | None = None


class ProbeReport(_Result):
    """What ``probe`` saw, and the verdict on it (see ollamactl.verdict).

    outcome: healthy, busy, loading, starting, stopped, failed, down, wedged or
    deep-wedged; exit_code is its exit code.  evidence: one line saying what
    decided it.  confirmed: a wedge's streak is complete (a restart is called
    for); since: when that streak began (epoch seconds); samples: how many
    rounds of probes the verdict took.
    """

    outcome: str
    healthy: bool
    exit_code: int
    evidence: str = ""
    confirmed: bool = False
    since: float | None = None
    samples: int = 1
    url: str
    liveness_seconds: float | None = None
    deep_seconds: float | None = None
    model: str | None = None
    detail: str = ""
    api_version: str | None = None
    unit: str | None = None
    active_state: str | None = None
    sub_state: str | None = None
    result: str | None = None
    started_at: float | None = None
