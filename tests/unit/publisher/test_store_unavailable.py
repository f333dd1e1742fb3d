"""The publisher's store refusing writes, because another process holds it past the busy
timeout or because the disk does (here a read-only file: SQLite's own refusal, as on a full
disk): calls answer UNAVAILABLE with the store's reason (not INTERNAL), and a refresh does not
try a second write that fails the same way."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import svc_common.sqlite_db as sqlite_db
from publisher_svc.cookie import encode_cookie
from publisher_svc.model import PrivacySettings
from publisher_svc.publisher import Publisher, TokenStatus
from publisher_svc.refresher import Refresher
from publisher_svc.store import SqliteStore
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind
from svc_common.sqlite_db import StoreUnavailable
from tests.unit.publisher.fakes import HOUR, FakeOperator, FakeSsp

BUSY_S = 0.3  # the real 30 s, shortened


@pytest.fixture(params=["STORE_BUSY", "STORE_WRITE_FAILED"])
def locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Publisher]:
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", BUSY_S)
    clock = ManualClock(1_700_000_000_000)
    pub = Publisher(
        store=SqliteStore(tmp_path), operator=FakeOperator(clock), ssp=FakeSsp(), clock=clock
    )
    pub.login("u0", "u0@example.com", None, PrivacySettings(True, ""))
    clock.advance(HOUR)  # due for a refresh
    path = next(tmp_path.glob("*.sqlite3"))
    if request.param == "STORE_BUSY":
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer, holding on
    else:
        other = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        monkeypatch.setattr(pub.store, "_db", other)  # reads work, every write is refused
    try:
        yield pub
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        pub.store.close()


def _operator_answers_optout(pub: Publisher) -> None:
    """The user u0 opts out at the operator: the next refresh of u0's identity says OPTOUT."""
    operator, stored = pub.operator, pub.store.get("u0")
    assert isinstance(operator, FakeOperator) and stored is not None
    operator.refresh_optout_keys.add(stored.dii_key)


def _param(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["locked"])


def test_a_due_refresh_that_cannot_be_kept_serves_the_held_unexpired_token(
    locked: Publisher,
) -> None:
    held = locked.store.get("u0")
    assert held is not None
    result = locked.get_advertising_token("u0")  # refreshed, but the store refuses the new one
    assert result.advertising_token == held.identity.advertising_token and not result.refreshed
    after = locked.store.get("u0")
    assert after is not None and after.identity == held.identity


def test_a_due_refresh_that_cannot_be_kept_with_the_held_token_expired_is_unavailable(
    locked: Publisher, request: pytest.FixtureRequest
) -> None:
    clock = locked.clock
    assert isinstance(clock, ManualClock)
    clock.advance(4 * 24 * HOUR)  # the held token has expired; its refresh token has not
    with pytest.raises(StoreUnavailable) as caught:
        locked.get_advertising_token("u0")
    assert caught.value.kind is ErrorKind.UNAVAILABLE and caught.value.reason == _param(request)


@pytest.mark.parametrize("path", ["token", "impression"])
def test_an_opt_out_that_cannot_be_recorded_never_serves_the_held_token(
    locked: Publisher, path: str
) -> None:
    ssp = locked.ssp
    assert isinstance(ssp, FakeSsp)
    _operator_answers_optout(locked)
    if path == "token":
        result = locked.get_advertising_token("u0")
        assert result.status is TokenStatus.OPTOUT and result.advertising_token == ""
    else:
        locked.serve_refresh_budget_s = 10.0  # wait for the refresh, however long the store is
        ad = locked.serve_ad(
            user_id="u0", cookie_value=None, placement_id="p", page_domain="a.com", floor_price=0
        )
        assert not ad.token_sent and ssp.impressions[-1].advertising_token == ""
    assert locked.store.get("u0") is not None  # not recorded: the next refresh asks again


def test_a_disk_refusing_writes_pauses_the_refresher_a_busy_store_does_not(
    locked: Publisher, request: pytest.FixtureRequest
) -> None:
    clock, operator = locked.clock, locked.operator
    assert isinstance(clock, ManualClock) and isinstance(operator, FakeOperator)
    refresher = Refresher(locked, workers=1, store_pause_s=10, monotonic=clock)
    try:
        with capture_logs() as logs:
            assert refresher.refresh_one("u0") == "deferred"
            calls = len(operator.refresh_calls)
            assert calls == 1
            refresher.run_once()
            paused = _param(request) == "STORE_WRITE_FAILED"
            # Paused: no operator call whose answer the store would throw away.
            assert len(operator.refresh_calls) == (1 if paused else 2)
            clock.advance(11_000)
            refresher.run_once()
            assert len(operator.refresh_calls) == (2 if paused else 3)
        warnings = [e for e in logs if e["event"] == "refresh_paused"]
        assert len(warnings) == (2 if paused else 0)
        assert refresher.readings()["refresh_paused_by_store"] == (1.0 if paused else 0.0)
        assert refresher.readings()["refresh_circuit_open"] == 0.0
        assert [e for e in logs if e["log_level"] == "error"] == []
    finally:
        refresher.stop()


def test_the_refresher_defers_without_a_second_wait(
    locked: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    postponed: list[str] = []
    monkeypatch.setattr(locked.store, "postpone", lambda user_id, *_: postponed.append(user_id))
    refresher = Refresher(locked, workers=1)
    try:
        assert refresher.refresh_one("u0") == "deferred"
        # One busy wait (storing the refreshed identity), not a second write to postpone it:
        # counted, not timed (a 0.3 s margin fails on a loaded box).
        assert postponed == []
    finally:
        refresher.stop()


def test_an_unreachable_operator_opens_the_circuit_even_when_the_store_is_busy(
    locked: Publisher,
) -> None:
    # The token has expired, so an unreachable operator is OPERATOR_UNAVAILABLE; recording the
    # deferral then meets the locked store.
    clock, operator = locked.clock, locked.operator
    assert isinstance(clock, ManualClock) and isinstance(operator, FakeOperator)
    clock.advance(4 * 24 * HOUR)
    operator.down = True
    refresher = Refresher(locked, workers=1)
    with capture_logs() as logs:
        assert refresher.refresh_one("u0") == "deferred"
    try:
        assert refresher._monotonic.monotonic_s() < refresher._circuit_until
        assert [e for e in logs if e["log_level"] == "error"] == []
    finally:
        refresher.stop()


def test_an_opt_out_that_cannot_be_recorded_pauses_the_refresher_like_any_refused_write(
    locked: Publisher, request: pytest.FixtureRequest
) -> None:
    clock, operator = locked.clock, locked.operator
    assert isinstance(clock, ManualClock) and isinstance(operator, FakeOperator)
    _operator_answers_optout(locked)
    refresher = Refresher(locked, workers=1, store_pause_s=10, monotonic=clock)
    try:
        for _ in range(3):
            refresher.run_once()
            clock.advance(1000)
        paused = _param(request) == "STORE_WRITE_FAILED"
        # Paused after the first refusal; a busy store is tried again each pass.
        assert len(operator.refresh_calls) == (1 if paused else 3)
        assert refresher.stats.deferred == (1 if paused else 3) and refresher.stats.optouts == 0
    finally:
        refresher.stop()


def test_a_client_side_refresh_answered_optout_is_optout_though_not_recorded(
    locked: Publisher,
) -> None:
    stored = locked.store.get("u0")
    assert stored is not None
    _operator_answers_optout(locked)
    result = locked.refresh_client(encode_cookie(stored.identity), email="u0@example.com")
    assert result.status is TokenStatus.OPTOUT
