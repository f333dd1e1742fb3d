"""Another process holding the publisher's store past the busy timeout: calls answer
UNAVAILABLE STORE_BUSY (not INTERNAL), and a refresh does not wait the timeout out twice."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import svc_common.sqlite_db as sqlite_db
from publisher_svc.model import PrivacySettings
from publisher_svc.publisher import Publisher
from publisher_svc.refresher import Refresher
from publisher_svc.store import SqliteStore
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind
from svc_common.sqlite_db import StoreBusy
from tests.unit.publisher.fakes import HOUR, FakeOperator, FakeSsp

BUSY_S = 0.3  # the real 30 s, shortened


@pytest.fixture
def locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Publisher]:
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", BUSY_S)
    clock = ManualClock(1_700_000_000_000)
    pub = Publisher(
        store=SqliteStore(tmp_path), operator=FakeOperator(clock), ssp=FakeSsp(), clock=clock
    )
    pub.login("u0", "u0@example.com", None, PrivacySettings(True, ""))
    clock.advance(HOUR)  # due for a refresh
    other = sqlite3.connect(next(tmp_path.glob("*.sqlite3")), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, holding on
    try:
        yield pub
    finally:
        other.execute("ROLLBACK")
        other.close()
        pub.store.close()


def test_a_due_refresh_on_a_locked_store_is_store_busy(locked: Publisher) -> None:
    with pytest.raises(StoreBusy) as caught:
        locked.get_advertising_token("u0")  # refreshes, then cannot store the result
    assert caught.value.kind is ErrorKind.UNAVAILABLE


def test_the_refresher_defers_without_a_second_wait(locked: Publisher) -> None:
    refresher = Refresher(locked, workers=1)
    try:
        started = time.monotonic()
        assert refresher.refresh_one("u0") == "deferred"
        # One busy wait (storing the refreshed identity), not a second one to postpone it.
        assert time.monotonic() - started < 2 * BUSY_S
    finally:
        refresher.stop()
