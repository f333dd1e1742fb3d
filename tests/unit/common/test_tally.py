"""Tally: counts bumped from many threads add up exactly."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from svc_common.tally import Tally

THREADS = 8
BUMPS = 20_000


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    # Switching threads every microsecond makes an unlocked read-add-write lose increments on
    # every run (measured: a plain dict loses a quarter of them), so the test can fail.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("eager_thread_switches")
def test_concurrent_bumps_are_never_lost() -> None:
    tally: Tally[str] = Tally(["a"])

    def bump() -> None:
        for i in range(BUMPS):
            tally.add("a" if i % 2 else "b")

    threads = [threading.Thread(target=bump) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.snapshot() == {"a": THREADS * BUMPS // 2, "b": THREADS * BUMPS // 2}


def test_snapshot_is_a_copy_and_starts_from_the_given_keys() -> None:
    tally: Tally[str] = Tally(["x", "y"])
    tally.add("y")
    snap = tally.snapshot()
    snap["y"] = 99
    assert tally.snapshot() == {"x": 0, "y": 1}
