"""The restart budget: at most N restarts per window, with growing gaps.

Pure arithmetic over a restart history, so the rules can be tested without a
clock: the shared one in /run/ollamactl for people and apps, the watchdog's
own in-memory one for the watchdog (members can write the shared one, see
controller.Unattended).  The defaults (3 per 10 minutes, gaps of 10 s then
20 s) stay far below systemd's own StartLimitBurst (5 starts in 10 s), so
ollamactl can never push the unit into ``start-limit-hit``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_RESTARTS = 3
DEFAULT_WINDOW = 600.0
DEFAULT_BACKOFF = 10.0


@dataclass(frozen=True)
class Budget:
    """max_restarts per window seconds; the k-th restart in a window waits backoff * 2**(k-1) after the last."""

    max_restarts: int = DEFAULT_MAX_RESTARTS
    window: float = DEFAULT_WINDOW
    backoff: float = DEFAULT_BACKOFF

    def next_allowed(self, history: list[float], now: float) -> float:
        """Earliest time the next restart may happen (``now`` if it may happen now)."""
        recent = sorted(t for t in history if now - self.window < t <= now)
        if not recent:
            return now
        allowed = recent[-1] + min(self.backoff * 2 ** (len(recent) - 1), self.window)
        if len(recent) >= self.max_restarts:
            allowed = max(allowed, recent[-self.max_restarts] + self.window)
        return max(allowed, now)

    def remaining(self, history: list[float], now: float) -> int:
        """Restarts the window still allows (the backoff aside): for the metrics."""
        return max(0, self.max_restarts - sum(1 for t in history if now - self.window < t <= now))
