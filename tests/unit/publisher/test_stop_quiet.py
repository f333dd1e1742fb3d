"""Review: the refresher's and the impressions' pools are shut down without waiting, so a job
can outlive the store's close; it must not log an error (or worse) when it then fails."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from structlog.testing import capture_logs

from publisher_svc.model import PrivacySettings, RefreshResult
from publisher_svc.publisher import Publisher
from publisher_svc.refresher import STOP_WAIT_S, Refresher
from publisher_svc.store import SqliteStore
from svc_common.clock import ManualClock
from tests.support.procs import wait_until
from tests.unit.publisher.fakes import HOUR, FakeOperator, FakeSsp


class _HeldOperator(FakeOperator):
    """Refresh waits until released: a call still in flight when the stop comes."""

    release: threading.Event

    def refresh(self, refresh_token: str) -> RefreshResult:
        self.in_flight += 1
        self.release.wait(5)
        return super().refresh(refresh_token)


def _due_for_refresh(tmp_path: Path) -> tuple[_HeldOperator, SqliteStore, Publisher, Refresher]:
    """A publisher with one identity due for refresh, an operator that holds refreshes until
    released, and a refresher not yet started."""
    clock = ManualClock(1_700_000_000_000)
    op = _HeldOperator(clock)
    op.release = threading.Event()
    store = SqliteStore(tmp_path)
    pub = Publisher(store=store, operator=op, ssp=FakeSsp(), clock=clock)
    pub.login("u0", "u0@example.com", None, PrivacySettings(True, ""))
    clock.advance(HOUR)
    return op, store, pub, Refresher(pub, workers=1, poll_interval_s=0.05)


def test_a_refresh_that_outlives_the_stop_logs_no_error(tmp_path: Path) -> None:
    op, store, pub, refresher = _due_for_refresh(tmp_path)
    with capture_logs() as logs:
        refresher.start()
        assert wait_until(lambda: op.in_flight > 0, 5)
        refresher.stop(timeout_s=0.1)  # its join gives up, as on a stuck stop
        pub.close()
        store.close()  # as Served.stop's clean-up does next
        op.release.set()
        assert wait_until(lambda: refresher.stats.deferred + refresher.stats.refreshed > 0, 5)
        time.sleep(0.1)
    assert [e for e in logs if e["log_level"] == "error"] == []


def test_a_stop_waits_about_a_second_for_a_refresh_pass_not_the_operators_deadline(
    tmp_path: Path,
) -> None:
    """A pass waiting on a frozen operator held the exit for the whole deadline (15 s with
    --operator-timeout 120); a refresh cut short loses nothing (its refresh token stays good)."""
    op, store, pub, refresher = _due_for_refresh(tmp_path)
    refresher.start()
    try:
        assert wait_until(lambda: op.in_flight > 0, 5)
        started = time.monotonic()
        refresher.stop()
        assert time.monotonic() - started < STOP_WAIT_S + 0.5
    finally:
        op.release.set()
        pub.close()
        store.close()
