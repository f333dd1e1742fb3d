"""Retry timing: capped exponential backoff with jitter. Pure (its randomness is injectable), so
domain code may use it as well as the peer clients."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(
        self,
        *,
        base_s: float = 0.05,
        cap_s: float = 2.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng

    def delay(self, attempt: int) -> float:
        return float(self._rng() * self._step(attempt))

    def equal_jitter_delay(self, attempt: int) -> float:
        """Half the capped step, plus up to as much again at random: never retries at once,
        and a fleet of callers that failed together does not retry together."""
        step = self._step(attempt)
        return float(step / 2 + self._rng() * step / 2)

    def next_attempt_ms(self, failed: int, now_ms: int) -> int:
        """When to try again (epoch ms) after `failed` failures in a row, the last at `now_ms`:
        equal jitter, and never sooner than 50 ms."""
        return now_ms + max(50, int(self.equal_jitter_delay(failed) * 1000))

    def _step(self, attempt: int) -> float:
        return float(min(self.cap_s, self.base_s * (2 ** min(attempt, 30))))
