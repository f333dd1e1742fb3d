"""UserLocks' bounded wait: UserBusy past it, no entry left behind, and a caller without a
deadline (gRPC reports some 9e18 s left) waits as before rather than failing."""

from __future__ import annotations

import threading

import pytest

from publisher_svc.user_locks import UserBusy, UserLocks


def test_a_bounded_wait_gives_up_and_leaves_nothing_behind() -> None:
    locks = UserLocks()
    with locks.hold("u"):
        with pytest.raises(UserBusy), locks.hold("u", 0.01):
            pass
        # A deadline already past: no wait at all.
        with pytest.raises(UserBusy), locks.hold("u", -1.0):
            pass
        assert len(locks) == 1  # only the holder's
    assert len(locks) == 0


def test_a_caller_without_a_deadline_waits_for_the_lock() -> None:
    locks = UserLocks()
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
