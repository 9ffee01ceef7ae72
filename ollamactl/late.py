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

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ollamactl import unitrecord
from ollamactl._log import RESTART_EVENT, audit, log
from ollamactl.config import Config
from ollamactl.errors import OllamactlError, TimedOut
from ollamactl.models import RestartResult
from ollamactl.nss import current_user
from ollamactl.runtime import HeldLock, take_turn

if TYPE_CHECKING:
    from ollamactl import probe


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
    import asyncio  # here, as probe: a late detector's turn at the lock (run) comes before, without them

    from ollamactl import probe

    found = _Ready.start(cfg, reason, observed_at, wait, timeout)
    if not isinstance(found, _Ready):
        return found
    while True:
        try:
            return found.answered(await probe.api_version(found.endpoint, found.http_timeout(), transport=transport))
        except (probe.HTTPError, TimeoutError) as exc:
            pause = found.not_yet(exc)
        if pause is None:
            return None
        await asyncio.sleep(pause)


def skip_blocking(
    cfg: Config, reason: str | None, observed_at: float | None, *, wait: bool, timeout: float
) -> RestartResult | None:
    """``skip`` without an event loop (the command line's late detectors: no asyncio to import).

    The same steps; the wait asks with ``probe.api_version_blocking``, so a URL that is not plain HTTP
    to an IP address goes to ``skip``.
    """
    from ollamactl import probe

    found = _Ready.start(cfg, reason, observed_at, wait, timeout)
    if not isinstance(found, _Ready):
        return found
    if found.endpoint.scheme != "http" or not probe.is_ip(found.endpoint.host):
        import asyncio

        return asyncio.run(skip(cfg, reason, observed_at, wait=wait, timeout=timeout))
    while True:
        try:
            return found.answered(probe.api_version_blocking(found.endpoint, found.http_timeout()))
        except (probe.HTTPError, TimeoutError) as exc:
            pause = found.not_yet(exc)
        if pause is None:
            return None
        time.sleep(pause)


@dataclass
class _Ready:
    """The steps both ``skip`` and ``skip_blocking`` take: the wait for Ollama's API after a restart seen."""

    cfg: Config
    result: RestartResult
    invocation_id: str
    endpoint: probe.Endpoint
    timeout: float
    end: float
    t0: float
    delay: float
    last_error: str = "no answer yet"

    @classmethod
    def start(
        cls, cfg: Config, reason: str | None, observed_at: float | None, wait: bool, timeout: float
    ) -> _Ready | RestartResult | None:
        """None: take the D-Bus path; a RestartResult: skipped, nothing to wait for; else the wait to run."""
        from ollamactl import probe

        if observed_at is None:
            return None
        run = unitrecord.started_since(cfg.unit, observed_at)
        if run is None:
            return None
        result = RestartResult(action="skipped", unit=cfg.unit, reason=reason, observed_at=observed_at,
                               new_invocation_id=run.invocation_id)  # fmt: skip
        if not wait:
            return result
        if cfg.url_from_unit:
            return None  # the URL is the unit's to say: D-Bus
        now = time.monotonic()
        return cls(cfg, result, run.invocation_id, probe.parse_url(cfg.url), timeout, now + timeout, now,
                   probe.READY_POLL_FIRST)  # fmt: skip

    def http_timeout(self) -> float:
        return max(0.001, min(self.cfg.http_timeout, self.end - time.monotonic()))

    def answered(self, version: str) -> RestartResult:
        ready = round(time.monotonic() - self.t0, 4)
        return dataclasses.replace(self.result, ready_seconds=ready, api_version=version)

    def not_yet(self, exc: Exception) -> float | None:
        """The pause before the next ask; None: take the D-Bus path.  TimedOut past the deadline."""
        from ollamactl import probe

        self.last_error = str(exc) or f"no answer within {self.cfg.http_timeout:g}s"
        now = unitrecord.current(self.cfg.unit)
        if now is None or now.invocation_id != self.invocation_id:
            return None  # stopped, failed or started again meanwhile: D-Bus says which
        if time.monotonic() >= self.end:
            unit, url = self.cfg.unit, self.endpoint.url
            raise TimedOut(
                f"{unit} was restarted after {self.result.observed_at:.3f}, but Ollama at {url} did not answer "
                f"within {self.timeout:g}s ({self.last_error}); see: journalctl -u {unit} -n 50",
                step="readiness",
                url=url,
            )
        pause = min(self.delay, max(0.0, self.end - time.monotonic()))
        self.delay = probe.next_ready_poll(self.delay, time.monotonic() - self.t0)
        return pause


@dataclass
class Turn:
    """What the command line's short way found: a skip, or what the D-Bus path goes on with."""

    skipped: RestartResult | None = None  # restarted since the wedge was seen: this is the answer
    lock: HeldLock | None = None  # the restart lock, taken before the bus was imported: this process restarts
    timeout: float = 0.0  # what is left of the caller's timeout for the D-Bus path

    def release(self) -> None:
        """Let go of the lock if the restart did not take it over (or never ran)."""
        if self.lock is not None:
            self.lock.close()


def run(cfg: Config, reason: str | None, observed_at: float | None, *, wait: bool, timeout: float) -> Turn:
    """``skip`` for the command line, journaled as the D-Bus path journals it; else the D-Bus path's turn.

    A hundred detectors of one wedge start together, before anyone has restarted, so each sees an old
    record.  So a late detector first takes its turn at the restart lock, with no event loop and no bus:
    the first takes the lock and restarts (over D-Bus, holding it); the others wait for it to let go, then
    read PID 1's record again, which now shows that restart, and skip without importing the bus.
    """
    end = time.monotonic() + timeout
    if observed_at is None or (wait and cfg.url_from_unit):
        # Not a late detector; or one whose wait needs the unit's URL, i.e. D-Bus anyway: then it asks PID 1
        # at once, as the holder restarts (waiting for its turn first would only put the bus after the restart).
        return Turn(timeout=timeout)
    fields = requested(cfg, reason, observed_at)
    try:
        if unitrecord.started_since(cfg.unit, observed_at) is None:
            lock = take_turn(Path(cfg.runtime_dir), cfg.group, timeout)  # TimedOut: the holder kept it too long
            if unitrecord.started_since(cfg.unit, observed_at) is None:  # not restarted (yet, or by the holder)
                return Turn(lock=lock, timeout=max(0.001, end - time.monotonic()))
            if lock is not None:
                lock.close()  # restarted just before we took it
        result = skip_blocking(cfg, reason, observed_at, wait=wait, timeout=max(0.001, end - time.monotonic()))
    except OllamactlError as err:  # journaled as the D-Bus path journals its failures
        not_done(err, fields)
        raise
    if result is None:  # the record changed meanwhile, or the URL is the unit's: D-Bus
        return Turn(timeout=max(0.001, end - time.monotonic()))
    log("INFO", "restart requested", **fields)
    log("INFO", "already restarted since the wedge was seen (PID 1's record); skipping", unit=cfg.unit)
    journal(result, fields)
    return Turn(skipped=result)


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


def not_done(err: OllamactlError, fields: dict[str, Any]) -> None:
    """The journal record of a restart decision that failed with ``err``."""
    audit(f"restart of {fields['unit']} not done: {err.message}", event=RESTART_EVENT, outcome=err.kind, **fields)


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
