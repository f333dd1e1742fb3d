"""Clocks passed into domain code, so tests can fix time."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class Monotonic(Protocol):
    """Seconds for measuring intervals (timeouts, circuit breakers): never jumps with the wall
    clock. Only differences between two readings mean anything."""

    def monotonic_s(self) -> float: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, now_ms: int) -> None:
        self._now = now_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return self._now

    def monotonic_s(self) -> float:
        # The same hand-moved time, so one `advance` moves dates and intervals together.
        return self._now / 1000

    def advance(self, ms: int) -> None:
        with self._lock:
            self._now += ms

    def set(self, now_ms: int) -> None:
        self._now = now_ms
