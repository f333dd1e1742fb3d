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


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # threads holding the lock or waiting for it


class UserLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        with self._guard:
            entry = self._entries.get(user_id)
            if entry is None:
                entry = self._entries[user_id] = _Entry()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.users:
                    del self._entries[user_id]

    def __len__(self) -> int:
        """Users whose lock is held or waited for now."""
        with self._guard:
            return len(self._entries)
