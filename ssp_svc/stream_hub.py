"""Bid-stream capture: fans every bid request out to subscribers without ever blocking the
auction. Each subscriber has a bounded buffer; when it is full the oldest entry is dropped and
counted, and the next entry delivered reports how many were lost."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from svc_common.errors import resource_exhausted
from svc_common.tally import Tally

T = TypeVar("T")


@dataclass(frozen=True)
class Delivery(Generic[T]):
    item: T
    sent_at_ms: int
    dropped_since_last: int
    dropped_total: int


class Subscription(Generic[T]):
    """One subscriber's bounded buffer. `get` is called by the subscriber's own thread only."""

    def __init__(
        self,
        hub: StreamHub[T],
        accept: Callable[[T], bool],
        capacity: int,
        owner: str = "",
        limited: bool = False,
    ) -> None:
        self._hub = hub
        self.owner = owner
        self.limited = limited
        self._accept = accept
        self._buf: deque[tuple[T, int]] = deque()
        self._capacity = capacity
        self._cond = threading.Condition(threading.Lock())
        self._dropped_pending = 0
        self.dropped_total = 0
        self.closed = False

    def offer(self, item: T, sent_at_ms: int) -> bool:
        """Never blocks. Returns False when an older entry had to be dropped."""
        if not self._accept(item):
            return True
        with self._cond:
            if self.closed:
                return True
            dropped = False
            if len(self._buf) >= self._capacity:
                self._buf.popleft()
                self._dropped_pending += 1
                self.dropped_total += 1
                dropped = True
            self._buf.append((item, sent_at_ms))
            self._cond.notify()
            return not dropped

    def get(self, timeout_s: float) -> Delivery[T] | None:
        """The next entry, or None after `timeout_s` or once closed and empty."""
        with self._cond:
            if not self._buf and not self.closed:
                self._cond.wait(timeout_s)
            if not self._buf:
                return None
            item, sent_at = self._buf.popleft()
            dropped, self._dropped_pending = self._dropped_pending, 0
            return Delivery(item, sent_at, dropped, self.dropped_total)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._hub._remove(self)

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class StreamHub(Generic[T]):
    def __init__(
        self, *, capacity: int = 1024, max_subscribers: int = 16, max_per_owner: int = 4
    ) -> None:
        self._capacity = capacity
        self._max = max_subscribers
        # One account may hold only a few of the slots, so no single key (a publisher's
        # included) can lock every other subscriber out of the bid stream.
        self._max_per_owner = max_per_owner
        # Nor may the "limited" accounts together (the publishers, each watching its own
        # inventory; there are many of them, each with a key): they share at most half the
        # slots, so a few of them cannot lock the subscribers out.
        self._max_limited = max(1, max_subscribers // 2)
        self._subs: tuple[Subscription[T], ...] = ()
        self._lock = threading.Lock()
        self._closed = False
        # Bumped by every auction thread at once: a Tally, so no count is lost.
        self._counts: Tally[str] = Tally(("published", "dropped"))

    def subscribe(
        self,
        accept: Callable[[T], bool] = lambda _: True,
        *,
        owner: str = "",
        limited: bool = False,
    ) -> Subscription[T]:
        """`limited`: one of the accounts that share at most half the slots (see __init__)."""
        sub = Subscription(self, accept, self._capacity, owner, limited)
        with self._lock:
            if self._closed or len(self._subs) >= self._max:
                raise resource_exhausted("TOO_MANY_SUBSCRIBERS", "too many bid-stream subscribers")
            if limited and sum(s.limited for s in self._subs) >= self._max_limited:
                raise resource_exhausted(
                    "TOO_MANY_PUBLISHER_STREAMS",
                    f"publishers' keys may hold at most {self._max_limited} bid-stream "
                    "subscriptions together",
                )
            if owner and sum(s.owner == owner for s in self._subs) >= self._max_per_owner:
                raise resource_exhausted(
                    "TOO_MANY_STREAMS_FOR_ACCOUNT",
                    f"an account may hold at most {self._max_per_owner} bid-stream subscriptions",
                )
            self._subs = (*self._subs, sub)
        return sub

    def publish(self, item: T, sent_at_ms: int) -> None:
        subs = self._subs  # an immutable snapshot: publishing takes no hub lock
        self._counts.add("published")
        for sub in subs:
            if not sub.offer(item, sent_at_ms):
                self._counts.add("dropped")

    @property
    def published(self) -> int:
        return self._counts.snapshot()["published"]

    @property
    def dropped(self) -> int:
        """Entries dropped from full subscriber buffers, all subscribers together."""
        return self._counts.snapshot()["dropped"]

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def closed(self) -> bool:
        """Closed for good: the server is stopping."""
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subs = self._subs
        for sub in subs:
            sub.close()

    def _remove(self, sub: Subscription[T]) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
