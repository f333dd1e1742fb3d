"""The reaper cancels a watched bid stream once its key has been refused at STRIKES checks in a
row, and no sooner: a stream that reads ends itself, UNAUTHENTICATED, at its own check."""

from __future__ import annotations

import time

from ssp_svc.stream_reaper import STRIKES, StreamReaper
from tests.support.procs import wait_until


class _Context:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_a_stream_whose_key_stays_refused_is_cancelled_at_the_last_strike() -> None:
    valid = {"good": True, "bad": True}
    reaper = StreamReaper(lambda key: valid[key], interval_s=3600)  # checks by hand here
    good, bad = _Context(), _Context()
    with reaper.watching("good", good), reaper.watching("bad", bad):
        valid["bad"] = False
        for _ in range(STRIKES - 1):
            assert reaper.check() == 0 and not bad.cancelled
        valid["bad"] = True  # enabled again in between: the count starts over
        assert reaper.check() == 0
        valid["bad"] = False
        for _ in range(STRIKES - 1):
            assert reaper.check() == 0
        assert reaper.check() == 1 and bad.cancelled and not good.cancelled


def test_the_thread_runs_while_streams_are_watched_and_then_ends() -> None:
    reaper = StreamReaper(lambda key: False, interval_s=0.02)
    context = _Context()
    with reaper.watching("k", context):
        assert wait_until(lambda: context.cancelled, 5)
    assert wait_until(lambda: reaper._thread is None, 5)
    time.sleep(0.05)
    assert reaper._thread is None
