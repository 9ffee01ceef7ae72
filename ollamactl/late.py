"""The late detector's short way: PID 1 already started the unit again after the caller saw the wedge.

When an app's many workers notice one wedge, one restarts and the others should learn "already
restarted after you saw it" at the cost of an interpreter start, not of D-Bus (importing dbus-next
and asking PID 1, a hundred times at once).  PID 1's own record of the unit's current run
(unitrecord) says when that run began; a run that began after ``observed_at`` is that restart.

What the caller then waits for is the same as on the D-Bus path: with ``wait``, Ollama's API
answering again.  That needs Ollama's URL, which only the unit's environment (D-Bus) knows unless
the caller named it (``--url``, the config, an instance, OLLAMA_HOST): so the short way waits only
for a named URL, and otherwise returns None and the caller takes the D-Bus path.  The same when
the record goes away during the wait (the unit stopped or failed): the D-Bus path says which.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

from ollamactl import probe, unitrecord
from ollamactl._log import RESTART_EVENT, audit, log
from ollamactl.config import Config
from ollamactl.errors import TimedOut
from ollamactl.models import RestartResult
from ollamactl.nss import current_user


async def skip(
    cfg: Config,
    reason: str | None,
    observed_at: float | None,
    *,
    wait: bool,
    timeout: float,
    transport: probe.Transport | None = None,
) -> RestartResult | None:
    """RestartResult "skipped" if PID 1's record shows a start after ``observed_at``; None: take the D-Bus path."""
    if observed_at is None:
        return None
    run = unitrecord.started_since(cfg.unit, observed_at)
    if run is None:
        return None
    result = RestartResult(
        action="skipped", unit=cfg.unit, reason=reason, observed_at=observed_at, new_invocation_id=run.invocation_id
    )
    if not wait:
        return result
    if cfg.url_from_unit:
        return None  # the URL is the unit's to say: D-Bus
    endpoint = probe.parse_url(cfg.url)
    end = time.monotonic() + timeout
    t0, delay, last_error = time.monotonic(), probe.READY_POLL_FIRST, "no answer yet"
    while True:
        try:
            version = await probe.api_version(endpoint, max(0.001, min(cfg.http_timeout, end - time.monotonic())),
                                              transport=transport)  # fmt: skip
            ready = round(time.monotonic() - t0, 4)
            return dataclasses.replace(result, ready_seconds=ready, api_version=version)
        except (probe.HTTPError, TimeoutError) as exc:
            last_error = str(exc) or f"no answer within {cfg.http_timeout:g}s"
        now = unitrecord.current(cfg.unit)
        if now is None or now.invocation_id != run.invocation_id:
            return None  # stopped, failed or started again meanwhile: D-Bus says which
        if time.monotonic() >= end:
            raise TimedOut(
                f"{cfg.unit} was restarted after {observed_at:.3f}, but Ollama at {endpoint.url} did not answer "
                f"within {timeout:g}s ({last_error}); see: journalctl -u {cfg.unit} -n 50",
                step="readiness",
                url=endpoint.url,
            )
        await asyncio.sleep(min(delay, max(0.0, end - time.monotonic())))
        delay = probe.next_ready_poll(delay, time.monotonic() - t0)


def run(
    cfg: Config, reason: str | None, observed_at: float | None, *, wait: bool, timeout: float
) -> RestartResult | None:
    """``skip`` for the command line, journaled as the D-Bus path journals it; None: take the D-Bus path."""
    if observed_at is None or unitrecord.started_since(cfg.unit, observed_at) is None:
        return None  # no event loop for nothing
    result = asyncio.run(skip(cfg, reason, observed_at, wait=wait, timeout=timeout))
    if result is not None:
        fields = requested(cfg, reason, observed_at)
        log("INFO", "restart requested", **fields)
        log("INFO", "already restarted since the wedge was seen (PID 1's record); skipping", unit=cfg.unit)
        journal(result, fields)
    return result


def requested(
    cfg: Config,
    reason: str | None,
    observed_at: float | None,
    *,
    verdict: str | None = None,
    evidence: str | None = None,
) -> dict[str, Any]:
    """Who asks for what: the fields of every restart decision's journal record (``ollamactl history``)."""
    return dict(unit=cfg.unit, reason=reason, observed_at=observed_at, verdict=verdict, evidence=evidence,
                uid=os.getuid(), user=current_user(), pid=os.getpid())  # fmt: skip


def journal(result: RestartResult, fields: dict[str, Any]) -> None:
    """The journal record of a restart decision (README: "What the journal records"; ``ollamactl history``)."""
    audit(
        f"{result.action} {result.unit} (reason: {result.reason or '-'})",
        event=RESTART_EVENT,
        outcome=result.action,
        old_invocation=result.old_invocation_id,
        new_invocation=result.new_invocation_id,
        job_result=result.job_result,
        job_seconds=result.job_seconds,
        ready_seconds=result.ready_seconds,
        **fields,
    )
