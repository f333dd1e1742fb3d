"""The reaper cancels a watched bid stream once its key has been refused at STRIKES checks in a
row, and no sooner: a stream that reads ends itself, UNAUTHENTICATED, at its own check."""

from __future__ import annotations

import time
from collections.abc import Callable

from ssp_svc.stream_reaper import STRIKES, StreamReaper
from tests.support.procs import wait_until


class _Context:
    """A call's context as the reaper uses it: cancel, and callbacks run when the call ends."""

    def __init__(self, *, over: bool = False) -> None:
        self.cancelled = False
        self.over = over
        self.callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        self.cancelled = True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.over:
            return False
        self.callbacks.append(callback)
        return True

    def end(self) -> None:
        for callback in self.callbacks:
            callback()


def test_a_stream_whose_key_stays_refused_is_cancelled_at_the_last_strike() -> None:
    valid = {"good": True, "bad": True}
    reaper = StreamReaper(lambda key: valid[key], interval_s=3600)  # checks by hand here
    good, bad = _Context(), _Context()
    reaper.watch("good", good)
    reaper.watch("bad", bad)
    valid["bad"] = False
    for _ in range(STRIKES - 1):
        assert reaper.check() == 0 and not bad.cancelled
    valid["bad"] = True  # enabled again in between: the count starts over
    assert reaper.check() == 0
    valid["bad"] = False
    for _ in range(STRIKES - 1):
        assert reaper.check() == 0
    assert reaper.check() == 1 and bad.cancelled and not good.cancelled
    bad.end()
    good.end()
    assert reaper.check() == 0  # neither is watched once its call is over


def test_a_call_over_before_it_is_watched_is_not_watched() -> None:
    reaper = StreamReaper(lambda key: False, interval_s=3600)
    gone = _Context(over=True)
    reaper.watch("k", gone)
    for _ in range(STRIKES):
        assert reaper.check() == 0
    assert not gone.cancelled


def test_the_thread_runs_while_streams_are_watched_and_then_ends() -> None:
    reaper = StreamReaper(lambda key: False, interval_s=0.02)
    context = _Context()
    reaper.watch("k", context)
    assert wait_until(lambda: context.cancelled, 5)
    context.end()
    assert wait_until(lambda: reaper._thread is None, 5)
    time.sleep(0.05)
    assert reaper._thread is None


def test_a_check_that_fails_once_does_not_end_the_watch() -> None:
    """A store error in one look (the store briefly unreadable): the thread goes on, and a key
    that stays refused is still reaped (mutation review: without the guard the thread died
    at the first error, and no stalled stream was reaped again)."""
    answers = iter([RuntimeError("store busy")])

    def key_valid(_key: str) -> bool:
        failure = next(answers, None)
        if failure is not None:
            raise failure
        return False

    reaper = StreamReaper(key_valid, interval_s=0.02)
    context = _Context()
    reaper.watch("k", context)
    assert wait_until(lambda: context.cancelled, 5)
    context.end()
