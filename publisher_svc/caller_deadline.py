"""The deadline of the caller whose call this thread is serving, for the peer calls it makes.

Set by the servicer around each call (callers_deadline), read where the call waits on a peer (a
slot in call_bound, the peer call itself in peer), so the domain code between them need not
carry it. Threads of their own (the background refresher, the refreshes an impression starts,
which outlive its wait) have none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from publisher_svc.model import CALLER_DEADLINE, PeerError

# time.monotonic, not the injected clock: it is compared with gRPC's own time_remaining().
_CALLERS_DEADLINE: ContextVar[float | None] = ContextVar("callers_deadline", default=None)


@contextmanager
def callers_deadline(remaining_s: float | None) -> Iterator[None]:
    """Peer calls made inside, on this thread, end by `remaining_s` from now (None: no bound
    but their own timeout): a caller that gave up holds no thread nor peer-call slot after."""
    token = _CALLERS_DEADLINE.set(None if remaining_s is None else time.monotonic() + remaining_s)
    try:
        yield
    finally:
        _CALLERS_DEADLINE.reset(token)


def callers_deadline_at() -> float | None:
    """The caller's deadline (time.monotonic), None when it gave none."""
    return _CALLERS_DEADLINE.get()


def callers_remaining_s() -> float | None:
    """Seconds left before the caller's deadline (negative once passed); None for no deadline."""
    deadline = _CALLERS_DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def caller_deadline_error(peer: str) -> PeerError:
    """The caller's deadline passed before `peer` answered, or before it could be asked."""
    return PeerError(peer, "DEADLINE_EXCEEDED", CALLER_DEADLINE, unavailable=True)
