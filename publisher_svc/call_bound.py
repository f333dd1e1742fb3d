"""At most so many callers' calls waiting on one peer (the operator, the SSP) at once.

The RPC server's threads serve every method. A slow or frozen peer holds each call that asks it
for its deadline, retries included: unbounded, such calls take every thread, and calls that
never ask it (a logout, a token that is not due) queue behind them for seconds. So at most
`limit` calls wait on the peer at once. When all slots are taken and the oldest call has waited
`slow_s`, the peer is slow: the next call is refused at once as if the peer were unreachable
(PeerError with the bound's `busy_reason`, unavailable). Otherwise the peer is only busy, and
the call waits up to `slow_s` for a slot, and no longer than its caller's deadline
(caller_deadline): a caller that gave up holds no server thread waiting for a slot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from publisher_svc.caller_deadline import caller_deadline_error, callers_remaining_s
from publisher_svc.model import PeerError
from svc_common.clock import Monotonic


class CallBound:
    def __init__(
        self, peer: str, limit: int, *, busy_reason: str, slow_s: float, monotonic: Monotonic
    ) -> None:
        if limit < 1:
            raise ValueError(f"the bound on {peer} calls must be at least 1")
        self.peer = peer
        self.limit = limit
        self.busy_reason = busy_reason
        self._slow_s = slow_s
        self._monotonic = monotonic
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        # each call waiting on the peer now -> when it started (monotonic seconds)
        self._started: dict[object, float] = {}
        self._shed = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Counts a call against the bound while it runs; see the module's docstring."""
        slots = self._slots
        if not slots.acquire(blocking=False):
            if self._oldest_s() >= self._slow_s:
                self._refuse()
            remaining = callers_remaining_s()
            if remaining is not None and remaining < self._slow_s:
                if not slots.acquire(timeout=max(remaining, 0.0)):
                    raise caller_deadline_error(self.peer)
            elif not slots.acquire(timeout=self._slow_s):
                self._refuse()
        call = object()
        with self._lock:
            self._started[call] = self._monotonic.monotonic_s()
        try:
            yield
        finally:
            with self._lock:
                del self._started[call]
            slots.release()

    def _refuse(self) -> NoReturn:
        with self._lock:
            self._shed += 1
        raise PeerError(self.peer, "UNAVAILABLE", self.busy_reason, unavailable=True)

    def _oldest_s(self) -> float:
        """How long the oldest call now waiting on the peer has waited; 0 for none."""
        with self._lock:
            started = min(self._started.values(), default=None)
        return 0.0 if started is None else self._monotonic.monotonic_s() - started

    def readings(self) -> tuple[int, int]:
        """(calls waiting on the peer now, calls refused at once since start)."""
        with self._lock:
            return len(self._started), self._shed
