"""One lock per user, held only while someone uses it.

A user's lock is held across calls to the operator (one refresh per user at a time; a logout
waits for the user's own refresh). Striped locks (a fixed set shared by hash) would make users
who share a stripe wait on each other's operator calls: with a frozen operator, a logout or a
current token took seconds for users who needed no operator call at all. Here a lock exists per
user while it is held or waited for, then goes, so memory follows the calls in flight, not the
users seen."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from svc_common.clock import Monotonic


class _Entry:
    __slots__ = ("held_since", "lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # threads holding the lock or waiting for it
        self.held_since: float | None = None  # when its holder took it (monotonic seconds)


class UserBusy(Exception):
    """The user's lock stayed held (by a call waiting on the operator) past the wait allowed,
    or (`crowded`) as many calls as allowed already wait for it."""

    def __init__(self, *, crowded: bool = False) -> None:
        super().__init__()
        self.crowded = crowded


class UserLocks:
    def __init__(self, monotonic: Monotonic) -> None:
        self._monotonic = monotonic
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @contextmanager
    def hold(
        self,
        user_id: str,
        wait_s: float | None = None,
        *,
        max_waiting: int | None = None,
        stuck_after_s: float = 0.5,
    ) -> Iterator[None]:
        """Holds the user's lock; with `wait_s`, waits that long at most, and with
        `max_waiting`, not at all when that many already wait on a holder that has had it
        `stuck_after_s` (one waiting on a hung operator); else UserBusy. Many calls for one
        user whose refresh hangs would otherwise each hold a server thread in this wait, and
        calls that need no operator would find none; a burst of one user's calls to a healthy
        operator just queues."""
        with self._guard:
            entry = self._entries.get(user_id)
            if entry is None:
                entry = self._entries[user_id] = _Entry()
            entry.users += 1
            since = entry.held_since
            crowded = (
                max_waiting is not None
                and entry.users - 1 > max_waiting
                and since is not None
                and self._monotonic.monotonic_s() - since >= stuck_after_s
            )
        try:
            if crowded:
                raise UserBusy(crowded=True)
            # A caller with no deadline reports some 9e18 s left: past what a lock takes.
            unbounded = wait_s is None or wait_s >= threading.TIMEOUT_MAX
            if not entry.lock.acquire(timeout=-1 if unbounded else max(wait_s or 0.0, 0.0)):
                raise UserBusy()  # no user id: the caller's, which may be an email
            entry.held_since = self._monotonic.monotonic_s()
            try:
                yield
            finally:
                entry.held_since = None
                entry.lock.release()
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.users:
                    del self._entries[user_id]

    def __len__(self) -> int:
        """Users whose lock is held or waited for now."""
        with self._guard:
            return len(self._entries)
