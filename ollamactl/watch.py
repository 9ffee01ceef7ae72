"""``ollamactl watch``: a probe loop that restarts a wedged Ollama, and nothing else.

Every ``watch_period`` it samples Ollama (liveness, and every
``watch_deep_every``-th period the runners' /slots and the journal) and asks
the shared verdict (ollamactl.verdict), which keeps the streaks: only a
confirmed wedge (whole server silent, or an inference loop or load that makes
no progress, with no request completing meanwhile) leads to a restart.  Busy,
loading and starting never count; a unit an admin stopped, or one that failed,
is logged once and waited on, never started; so is one whose URL cannot be
known (an unreadable environment file may set its OLLAMA_HOST), never probed.  Restarts go through
AsyncController.restart with ``observed_at`` (when the streak began), so they
are coalesced with any app that saw the same wedge, and budgeted, so a wedge
that survives restarts cannot loop.  Every decision is logged with its
evidence.  Under systemd it speaks sd_notify: READY=1, STATUS=, WATCHDOG=1
and STOPPING=1.

Members of the group can write the shared runtime directory, so the watchdog
trusts nothing in it: its restart budget counts only its own restarts, it
waits for the shared lock a bounded time (see controller.Unattended), and a
tick that fails in any way is logged and counted, and the loop goes on, so no
input can stop recovery.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from ollamactl._log import RECOVERED_EVENT, audit, log
from ollamactl.budget import Budget
from ollamactl.controller import AsyncController, Unattended
from ollamactl.errors import BudgetExhausted, OllamactlError, UnitFailed, UnitStopped, UrlUnknown
from ollamactl.metrics import RUNTIME_DIR, InstanceMetrics, WatchdogMetrics, render, write_textfile
from ollamactl.verdict import BUSY, FAILED, HEALTHY, LOADING, RESTARTABLE, STARTING, STOPPED, Judge, Limits


class Notifier:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET (no-op outside systemd)."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 / 2 if usec.isdigit() and mine else None

    def send(self, **fields: str | int) -> None:
        if not self.address:
            return
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:  # as sd_notify(3): a notification that cannot be sent must not stop the loop
            log("DEBUG", "sd_notify failed", error=exc.strerror)


class Watcher:
    """One watch loop over one unit; ``run`` returns when ``stop`` is set."""

    def __init__(
        self, actl: AsyncController, notifier: Notifier | None = None, progress: Callable[[str], None] | None = None
    ) -> None:
        self.actl = actl
        self.progress = progress  # run by hand on a terminal: one updating line with the current verdict
        self.cfg = actl.config
        self.notifier = notifier or Notifier()
        self.stop = asyncio.Event()
        self.judge = Judge(Limits.from_config(self.cfg))  # the verdict's streaks, kept across ticks
        self.last: tuple[str, str] | None = None  # the last outcome and evidence logged
        self.hold_until = 0.0  # budget exhausted: no restart attempts before this (wall clock)
        self.heartbeat = time.monotonic()
        self.restarts = 0
        self.restarted_at: float | None = None  # monotonic time of our last restart, until healthy again
        self.replaced: str | None = None  # the invocation ID that restart replaced (history links the two)
        self.unattended = Unattended()  # our own restart history (budget) and bounded lock wait
        self.errors = 0  # ticks that failed with an unexpected exception
        self.unknown_url: str | None = None  # why Ollama's URL cannot be known, as last logged (UrlUnknown)
        self.ping = True  # send WATCHDOG=1 from run(); watch() does it for several watchers at once
        # Several instances in one process: each line says which one (the unit is a field of every entry too).
        self.tag = f"{self.cfg.instance or self.cfg.unit}: " if self.cfg.instances else ""
        self.metrics = InstanceMetrics(self.cfg.instance or self.cfg.unit.removesuffix(".service"), self.cfg.unit)

    def _log(self, level: str, message: str, **fields: Any) -> None:
        fields.setdefault("unit", self.cfg.unit)
        log(level, self.tag + message, **fields)

    async def run(self) -> None:
        cfg = self.cfg
        self._log(
            "INFO",
            "watching",
            url="from the unit's OLLAMA_HOST" if cfg.url_from_unit else cfg.url,
            period=cfg.watch_period,
            threshold=cfg.watch_failure_threshold,
            grace=cfg.watch_startup_grace,
            model=cfg.model,
            deep_probe=cfg.deep_probe,
            deep_every=cfg.watch_deep_every,
            deep_confirm=cfg.deep_confirm,
            load_timeout=cfg.load_timeout,
        )
        pinger = asyncio.create_task(self._ping_watchdog()) if self.ping else None
        try:
            iteration = 0
            while not self.stop.is_set():
                started = time.monotonic()
                deep = self.judge.deep_pending or iteration % cfg.watch_deep_every == 0
                await self._guarded_tick(deep)
                if iteration == 0:
                    self.notifier.send(READY=1)
                iteration += 1
                self.heartbeat = time.monotonic()
                delay = max(0.0, cfg.watch_period - (time.monotonic() - started))
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            if pinger is not None:
                pinger.cancel()
            self.notifier.send(STOPPING=1, STATUS="stopping")
            self._log("INFO", "watch stopped", restarts=self.restarts, errors=self.errors)

    async def _guarded_tick(self, deep: bool) -> None:
        """One tick; whatever it raises (short of cancellation), the loop goes on to the next.

        A bug, or an input nobody foresaw, must cost one probe period, not the
        watchdog: under Restart=on-failure a crash could loop, and meanwhile
        nothing would recover a wedged Ollama.  The failure streak is kept, so
        the next failing tick still asks for the restart.
        """
        try:
            await self.tick(deep)
        except Exception as exc:  # not BaseException: cancellation and exits still stop the loop
            self.errors += 1
            what = f"{type(exc).__name__}: {_printable(_text(exc))}"
            self._log(
                "ERROR", f"watch tick failed, still watching: {what}", error=type(exc).__name__, errors=self.errors
            )
            self.notifier.send(STATUS=f"tick failed ({type(exc).__name__}); still watching")

    async def tick(self, deep: bool) -> None:
        """One sample, the verdict on it, and what follows: nothing, a log line, or a restart."""
        try:
            report = await self.actl.probe(deep=deep, judge=self.judge)
        except UrlUnknown as err:  # nothing to probe until the file is readable: say so once, keep watching
            self._url_unknown(err)
            return
        except OllamactlError as err:  # e.g. the bus is down: say so, keep watching
            self._log("ERROR", f"probe failed to run: {err.message}", error=err.kind)
            self.notifier.send(STATUS=f"probe failed to run: {err.kind}")
            return
        if self.unknown_url is not None:
            self._log("INFO", f"Ollama's URL is known again ({report.url}); probing it", url=report.url)
            self.unknown_url = None
        outcome, evidence = report.outcome, report.evidence
        m = self.metrics
        m.outcome, m.failures, m.probed_at = outcome, self.judge.failures, time.time()
        m.budget_remaining = self.budget_remaining()
        changed = self.last is None or self.last[0] != outcome
        self.notifier.send(STATUS=f"{self.tag}{outcome}: {evidence}"[:200])
        if self.progress is not None:
            self.progress(f"watching {self.cfg.unit}: {outcome}: {evidence}"[:200])
        if outcome in (STOPPED, FAILED):
            if self.last != (outcome, evidence):  # once per state, not every period
                self._log("WARNING", f"{outcome}: {evidence}; waiting, never restarting it", outcome=outcome)
        elif outcome in RESTARTABLE and report.confirmed:
            self.last = (outcome, evidence)
            await self.recover(outcome, evidence, report.since)
            return
        elif outcome in RESTARTABLE:
            self._log("WARNING", f"{outcome}, not confirmed yet: {evidence}", outcome=outcome)
        elif outcome == HEALTHY:
            if self.restarted_at is not None:
                took = time.monotonic() - self.restarted_at
                self.metrics.last_recovery_seconds = round(took, 3)
                # An audit record, as the restart's: history reads the time to recover from it.
                audit(
                    f"{self.tag}healthy again {took:.1f}s after the restart: {evidence}",
                    event=RECOVERED_EVENT,
                    unit=self.cfg.unit,
                    old_invocation=self.replaced,
                    recovery_seconds=round(took, 3),
                )
                self.restarted_at = self.replaced = None
            elif changed and self.last is not None:
                self._log("INFO", f"healthy: {evidence}", outcome=outcome)
            else:
                self._log("DEBUG", f"healthy: {evidence}", deep=deep)
        elif changed and outcome in (BUSY, LOADING, STARTING):
            self._log("INFO", f"{outcome} (no restart): {evidence}", outcome=outcome)
        else:
            self._log("DEBUG", f"{outcome}: {evidence}", outcome=outcome)
        self.last = (outcome, evidence)

    def _url_unknown(self, err: UrlUnknown) -> None:
        """Log the refusal once per change (not every period); forget the streaks, and the last outcome.

        Streaks from before must not confirm a wedge once the URL is known
        again (it may be another server's), and the metrics must not go on
        showing an outcome nobody probed.
        """
        if err.message != self.unknown_url:
            self._log("ERROR", f"not probing, never restarting: {err.message}", error=err.kind)
            self.notifier.send(STATUS=f"{self.tag}Ollama's URL cannot be known; not probing"[:200])
            self.unknown_url = err.message
        else:
            self._log("DEBUG", f"still not probing: {err.message}", error=err.kind)
        self.judge.reset()
        self.last = None
        self.metrics.outcome, self.metrics.failures, self.metrics.probed_at = None, 0, time.time()

    async def recover(self, outcome: str, evidence: str, since: float | None) -> None:
        """Ask for the coalesced, budgeted restart of a confirmed wedge; log what happened."""
        now = time.time()
        if now < self.hold_until:
            self._log("DEBUG", "restart budget still exhausted", retry_in=round(self.hold_until - now, 1))
            return
        reason = f"watch: {outcome}: {evidence}"
        self._log("WARNING", f"restarting: {outcome}: {evidence}", outcome=outcome)
        try:
            # No waiting for readiness here: the loop's own probes (and the startup
            # grace) judge the new process, and a wedge that survives the restart
            # must not block the loop for the whole restart timeout.
            result: Any = await self.actl.restart(
                reason, wait=False, observed_at=since, unattended=self.unattended, verdict=outcome, evidence=evidence
            )
        except BudgetExhausted as err:
            self._count("budget-exhausted")
            self.hold_until = time.time() + float(err.details.get("retry_after", self.cfg.watch_period))
            self._log("WARNING", err.message, outcome="budget-exhausted")
            self.notifier.send(STATUS=f"restart budget exhausted; next in {err.details.get('retry_after')}s")
            return
        except (UnitStopped, UnitFailed) as err:  # the admin stopped it meanwhile: theirs, not ours
            self._count("refused")
            self._log("WARNING", f"not restarting: {err.message}", outcome=err.kind)
            return
        except OllamactlError as err:
            self._count("failed")
            self._log("ERROR", f"restart failed: {err.message}", outcome=err.kind)
            return
        finally:
            self.judge.reset()
        self._count(result.action)
        self.metrics.budget_remaining = self.budget_remaining()
        if result.action == "queued":
            self.restarts += 1
            self.restarted_at = time.monotonic()
            self.replaced = result.old_invocation_id
        self._log("INFO", f"restart of {result.unit}: {result.action}", action=result.action, job=result.job)

    def _count(self, outcome: str) -> None:
        counts = self.metrics.restarts
        if counts is not None:
            counts[outcome] = counts.get(outcome, 0) + 1

    def budget_remaining(self) -> int:
        """Restarts our own budget still allows in its window (the watchdog's budget is its own history)."""
        cfg = self.cfg
        budget = Budget(cfg.max_restarts, cfg.restart_window, cfg.restart_backoff)
        return budget.remaining(self.unattended.history, time.time())

    @property
    def stuck_after(self) -> float:
        """Seconds without a finished tick after which this loop counts as stuck."""
        cfg = self.cfg
        return cfg.watch_period + cfg.probe_timeout + cfg.deep_timeout + cfg.timeout + 5

    async def _ping_watchdog(self) -> None:
        """WATCHDOG=1 while the loop makes progress; a stuck loop lets systemd restart us."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            if time.monotonic() - self.heartbeat < self.stuck_after:
                self.notifier.send(WATCHDOG=1)
            await asyncio.sleep(interval)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break the handler that keeps the loop alive
        return "(no message)"


def _printable(text: str, limit: int = 300) -> str:
    """``text`` on one line, without control characters, at most ``limit`` characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


async def watch(actl: AsyncController, progress: Callable[[str], None] | None = None) -> int:
    """Run the watch loop until SIGTERM or SIGINT; returns the exit code.

    With [instances.NAME] tables in the config (and no --unit naming one),
    every instance is watched, concurrently in this one process, each with its
    own verdict streaks, coalescing and restart budget: a wedge of one never
    restarts another.  ``progress``: called each period with a unit's verdict
    and its evidence (the CLI's TTY line).
    """
    cfg = actl.config
    if cfg.instances and cfg.instance is None:
        controllers = [actl.for_instance(inst) for inst in cfg.instances]
    else:
        controllers = [actl]
    notifier = Notifier()
    stop = asyncio.Event()
    watchers = [Watcher(c, notifier=notifier, progress=progress) for c in controllers]
    for w in watchers:
        w.stop = stop
        w.ping = len(watchers) == 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pinger = asyncio.create_task(_ping_all(watchers, notifier)) if len(watchers) > 1 else None
    writer = asyncio.create_task(_write_metrics(watchers, cfg)) if cfg.metrics_dir else None
    try:
        await asyncio.gather(*(w.run() for w in watchers))
    finally:
        for task in (pinger, writer):
            if task is not None:
                task.cancel()
    return 0


async def _write_metrics(watchers: list[Watcher], cfg: Any) -> None:
    """Every period, the metrics of every instance to the textfile directory; a failure is logged once.

    Under systemd the file goes to our RuntimeDirectory (/run/ollamactl-metrics),
    which ExecStartPre=+ links from metrics_dir (node_exporter's directory is
    not ours to write); run by hand, straight into metrics_dir.  On the way out
    a last write says ollamactl_watchdog_up 0, so a stopped watchdog is seen.
    """
    started = time.time()
    runtime = os.environ.get("RUNTIME_DIRECTORY", "")
    directory = RUNTIME_DIR if RUNTIME_DIR in runtime.split(":") else cfg.metrics_dir
    explicit = cfg.sources.get("metrics_dir", "default") != "default"
    last_problem: str | None = None

    def write(up: bool) -> None:
        nonlocal last_problem
        mono = time.monotonic()
        heartbeat = time.time() - (mono - min(w.heartbeat for w in watchers))
        text = render([w.metrics for w in watchers], WatchdogMetrics(started, heartbeat, up=up))
        try:
            write_textfile(directory, text)
            problem = None
        except OllamactlError as err:
            problem = err.message
        if problem != last_problem:
            if problem is None:
                log("INFO", f"writing Prometheus metrics to {directory}")
            else:  # the default directory is absent without node_exporter: only an explicit one is worth a warning
                log("WARNING" if explicit else "INFO", f"metrics not written: {problem}")
            last_problem = problem

    try:
        while True:
            await asyncio.sleep(cfg.watch_period)
            write(up=True)
    finally:
        write(up=False)


async def _ping_all(watchers: list[Watcher], notifier: Notifier) -> None:
    """WATCHDOG=1 only while every instance's loop makes progress: one stuck loop lets systemd restart us."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        if all(time.monotonic() - w.heartbeat < w.stuck_after for w in watchers):
            notifier.send(WATCHDOG=1)
        await asyncio.sleep(interval)
