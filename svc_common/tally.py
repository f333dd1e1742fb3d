"""Counters that many RPC threads bump at once.

`d[k] += 1` on a plain dict is a read, an add and a write: two threads can read the same value
and one increment is lost. A Tally takes a lock around each bump and hands out copies."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K")


class Tally(Generic[K]):
    def __init__(self, keys: Iterable[K] = ()) -> None:
        self._lock = threading.Lock()
        self._counts: dict[K, int] = dict.fromkeys(keys, 0)

    def add(self, key: K) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[K, int]:
        """A copy, so a reader never sees the dict change under it."""
        with self._lock:
            return dict(self._counts)
