"""UserLocks' bounded wait: UserBusy past it, no entry left behind, and a caller without a
deadline (gRPC reports some 9e18 s left) waits as before rather than failing."""

from __future__ import annotations

import threading
import time

import pytest

from publisher_svc.user_locks import UserBusy, UserLocks
from svc_common.clock import ManualClock


def test_a_bounded_wait_gives_up_and_leaves_nothing_behind() -> None:
    locks = UserLocks(ManualClock(0))
    with locks.hold("u"):
        with pytest.raises(UserBusy), locks.hold("u", 0.01):
            pass
        # A deadline already past: no wait at all.
        with pytest.raises(UserBusy), locks.hold("u", -1.0):
            pass
        assert len(locks) == 1  # only the holder's
    assert len(locks) == 0


def test_a_caller_without_a_deadline_waits_for_the_lock() -> None:
    locks = UserLocks(ManualClock(0))
    got: list[bool] = []
    with locks.hold("u"):
        waiter = threading.Thread(target=lambda: got.append(_take(locks, 9.2e18)))
        waiter.start()
        waiter.join(0.1)
        assert waiter.is_alive()  # waiting, not failed
    waiter.join(5)
    assert got == [True] and len(locks) == 0


def _take(locks: UserLocks, wait_s: float) -> bool:
    with locks.hold("u", wait_s):
        return True


def test_callers_past_the_waiting_cap_are_turned_away_only_once_the_holder_is_stuck() -> None:
    """The cap applies to a holder that has had the lock `stuck_after_s` on the injected clock
    (one waiting on a hung operator); before that, one more waiter just queues."""
    clock = ManualClock(0)
    locks = UserLocks(clock)
    waiters: list[threading.Thread] = []
    with locks.hold("u"):
        for _ in range(2):  # the cap's worth of waiters
            waiter = threading.Thread(target=lambda: _take(locks, 5.0))
            waiter.start()
            waiters.append(waiter)
        deadline = time.monotonic() + 5
        while _users(locks, "u") < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert _users(locks, "u") == 3  # the holder and its two waiters
        # Holder not stuck yet on the clock: a third waiter is let in (it gives up at once).
        with pytest.raises(UserBusy) as queued, locks.hold("u", 0.0, max_waiting=2):
            pass
        assert not queued.value.crowded
        clock.advance(500)  # 0.5 s held
        with pytest.raises(UserBusy) as crowded, locks.hold("u", 5.0, max_waiting=2):
            pass
        assert crowded.value.crowded
    for waiter in waiters:
        waiter.join(5)
    assert len(locks) == 0


def _users(locks: UserLocks, user_id: str) -> int:
    entry = locks._entries.get(user_id)
    return 0 if entry is None else entry.users
