"""The publisher's store refusing writes, because another process holds it past the busy
timeout or because the disk does (here a read-only file: SQLite's own refusal, as on a full
disk): calls answer UNAVAILABLE with the store's reason (not INTERNAL), a refresh does not
try a second write that fails the same way, and an opt-out the store cannot record is honoured
from memory until it can."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import svc_common.sqlite_db as sqlite_db
from publisher_svc.cookie import encode_cookie
from publisher_svc.inputs import hash_dii
from publisher_svc.model import PrivacySettings, StorageMode
from publisher_svc.publisher import Publisher
from publisher_svc.refresher import Refresher
from publisher_svc.results import LoginStatus, TokenStatus
from publisher_svc.store import SqliteStore
from publisher_svc.unrecorded_optouts import UnrecordedOptOuts
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind
from svc_common.sqlite_db import StoreUnavailable
from tests.unit.publisher.fakes import HOUR, FakeOperator, FakeSsp

BUSY_S = 0.3  # the real 30 s, shortened


@dataclass
class Refusing:
    pub: Publisher
    heal: Callable[[], None]  # the store takes writes again


@pytest.fixture(params=["STORE_BUSY", "STORE_WRITE_FAILED"])
def refusing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Refusing]:
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", BUSY_S)
    clock = ManualClock(1_700_000_000_000)
    pub = Publisher(
        store=SqliteStore(tmp_path), operator=FakeOperator(clock), ssp=FakeSsp(), clock=clock
    )
    pub.login("u0", "u0@example.com", None, PrivacySettings(True, ""))
    clock.advance(HOUR)  # due for a refresh
    path = next(tmp_path.glob("*.sqlite3"))
    writable = pub.store._db
    if request.param == "STORE_BUSY":
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer, holding on

        def heal() -> None:
            other.execute("ROLLBACK")
    else:
        other = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        monkeypatch.setattr(pub.store, "_db", other)  # reads work, every write is refused

        def heal() -> None:
            pub.store._db = writable  # the disk has room again

    try:
        yield Refusing(pub, heal)
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        pub.close()  # its queued background jobs are dropped before the store closes
        pub.store.close()


@pytest.fixture
def locked(refusing: Refusing) -> Publisher:
    return refusing.pub


def _operator_answers_optout(pub: Publisher) -> None:
    """The user u0 opts out at the operator: the next refresh of u0's identity says OPTOUT."""
    operator, stored = pub.operator, pub.store.get("u0")
    assert isinstance(operator, FakeOperator) and stored is not None
    operator.refresh_optout_keys.add(stored.dii_key)


def _param(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["refusing"])


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
    assert locked.store.get("u0") is not None  # not recorded: held in memory instead


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
        # Paused after the first refusal (a busy store is tried again each pass), and the
        # opt-out held: not asked of the operator again either way.
        assert len(operator.refresh_calls) == 1
        assert refresher.stats.deferred == 1 and refresher.stats.optouts == 0
        paused = _param(request) == "STORE_WRITE_FAILED"
        assert refresher.readings()["refresh_paused_by_store"] == (1.0 if paused else 0.0)
    finally:
        refresher.stop()


def test_a_client_side_refresh_answered_optout_is_optout_though_not_recorded(
    locked: Publisher,
) -> None:
    stored = locked.store.get("u0")
    assert stored is not None
    _operator_answers_optout(locked)
    locked.mode = StorageMode.CLIENT  # the identity stored in server mode, sent as a cookie
    result = locked.refresh_client(encode_cookie(stored.identity), email="u0@example.com")
    assert result.status is TokenStatus.OPTOUT


# -- a login answered OPTOUT that the store cannot record ------------------------------------


def _login_answered_optout(pub: Publisher, user_id: str = "u0") -> str:
    """The user opts out at the operator and logs in again, the store refusing the record:
    the login answers the store's refusal (server mode: the identity stored before is ended
    only in memory, so the caller must try again); returns the DII hash of the opt-out."""
    operator = pub.operator
    assert isinstance(operator, FakeOperator)
    operator.optout_keys.add(_key(f"{user_id}@example.com"))
    with pytest.raises(StoreUnavailable):
        pub.login(user_id, f"{user_id}@example.com", None, PrivacySettings(True, ""))
    return _key(f"{user_id}@example.com")


def _key(email: str) -> str:
    return hash_dii(email, None).key


@pytest.mark.parametrize("due", [True, False], ids=["due", "not-due"])
def test_an_unrecorded_login_optout_ends_serving_the_identity_stored_before(
    locked: Publisher, due: bool
) -> None:
    clock, operator, ssp = locked.clock, locked.operator, locked.ssp
    assert isinstance(clock, ManualClock) and isinstance(operator, FakeOperator)
    assert isinstance(ssp, FakeSsp)
    if not due:
        clock.advance(-HOUR)  # the held identity is used as is, no refresh asked
    held = locked.store.get("u0")
    assert held is not None
    _login_answered_optout(locked)
    token = locked.get_advertising_token("u0")
    assert token.status is TokenStatus.OPTOUT and token.advertising_token == ""
    locked.serve_refresh_budget_s = 10.0  # wait for any refresh, however long the store is
    ad = locked.serve_ad(
        user_id="u0", cookie_value=None, placement_id="p", page_domain="a.com", floor_price=0
    )
    assert not ad.token_sent and ssp.impressions[-1].advertising_token == ""
    assert operator.refresh_calls == []
    # Logging in again with the opted-out DII does not ask the operator either (reference
    # §1.7), for this user or another one; it tries the record again, which still fails.
    generated = len(operator.generate_calls)
    for user_id in ("u0", "u9"):
        with pytest.raises(StoreUnavailable):
            locked.login(user_id, "u0@example.com", None, PrivacySettings(True, ""))
    assert len(operator.generate_calls) == generated
    assert locked.store.get("u0") == held  # not recorded: held in memory instead


def test_the_refresher_leaves_alone_an_identity_whose_opt_out_is_unrecorded(
    locked: Publisher,
) -> None:
    clock, operator = locked.clock, locked.operator
    assert isinstance(clock, ManualClock) and isinstance(operator, FakeOperator)
    _login_answered_optout(locked)
    refresher = Refresher(locked, workers=1, store_pause_s=10, monotonic=clock)
    try:
        assert refresher.refresh_one("u0") == "deferred"  # due, but opted out: not refreshed
        for _ in range(3):
            refresher.run_once()
            clock.advance(11_000)  # past any pause
        assert operator.refresh_calls == []
        assert locked.readings()["unrecorded_optouts"] == 1.0
    finally:
        refresher.stop()


@pytest.mark.parametrize("by", ["refresher", "another-write"])
def test_an_unrecorded_login_optout_is_recorded_once_the_store_takes_writes(
    refusing: Refusing, tmp_path: Path, by: str
) -> None:
    pub = refusing.pub
    clock, operator = pub.clock, pub.operator
    assert isinstance(clock, ManualClock) and isinstance(operator, FakeOperator)
    key = _login_answered_optout(pub)
    refusing.heal()
    if by == "refresher":
        Refresher(pub, workers=1, monotonic=clock).run_once()
    else:
        # Another user's login is the first write the store takes: it records the held
        # opt-out in the background.
        pub.login("u1", "u1@example.com", None, PrivacySettings(True, ""))
        deadline = time.monotonic() + 10
        while len(pub.unrecorded_optouts) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(pub.unrecorded_optouts) == 0
    pub.store.close()
    reopened = SqliteStore(tmp_path)
    try:
        assert reopened.is_operator_optout(key)
        assert reopened.get("u0") is None and reopened.ended_status("u0") == "OPTOUT"
        after = Publisher(store=reopened, operator=operator, ssp=FakeSsp(), clock=clock)
        assert after.get_advertising_token("u0").status is TokenStatus.OPTOUT
        generated = len(operator.generate_calls)
        login = after.login("u0", "u0@example.com", None, PrivacySettings(True, ""))
        assert login.status is LoginStatus.OPTOUT and len(operator.generate_calls) == generated
        assert operator.refresh_calls == []
    finally:
        reopened.close()


def test_a_new_login_after_the_store_heals_records_the_held_optout_first_and_keeps_its_identity(
    refusing: Refusing,
) -> None:
    pub = refusing.pub
    clock = pub.clock
    assert isinstance(clock, ManualClock)
    old_key = _login_answered_optout(pub)
    refusing.heal()
    login = pub.login("u0", "new@example.com", None, PrivacySettings(True, ""))
    assert login.status is LoginStatus.SUCCESS
    assert pub.store.is_operator_optout(old_key) and len(pub.unrecorded_optouts) == 0
    # Nothing recorded later ends the new identity: not the refresher's pass, not a token.
    clock.advance(HOUR)
    Refresher(pub, workers=1, monotonic=clock).run_once()
    token = pub.get_advertising_token("u0")
    assert token.status is TokenStatus.SUCCESS and token.advertising_token


def test_an_unrecorded_refresh_optout_is_held_so_the_operator_is_not_asked_again(
    locked: Publisher,
) -> None:
    operator = locked.operator
    assert isinstance(operator, FakeOperator)
    _operator_answers_optout(locked)
    for _ in range(3):
        assert locked.get_advertising_token("u0").status is TokenStatus.OPTOUT
    assert len(operator.refresh_calls) == 1


def test_an_unrecorded_login_optout_clears_the_client_side_cookie(locked: Publisher) -> None:
    locked.mode = StorageMode.CLIENT
    operator = locked.operator
    assert isinstance(operator, FakeOperator)
    operator.optout_keys.add(_key("c@example.com"))
    result = locked.login("c", "c@example.com", None, PrivacySettings(True, ""))
    assert result.status is LoginStatus.OPTOUT and result.clear_cookie


def test_a_client_side_refresh_optout_not_recorded_spares_the_next_login_the_operator(
    locked: Publisher,
) -> None:
    stored = locked.store.get("u0")
    operator = locked.operator
    assert stored is not None and isinstance(operator, FakeOperator)
    _operator_answers_optout(locked)
    # A client-side deployment (the identity stored in server mode, sent as a cookie): no
    # identity stored to end, so the login answers OPTOUT.
    locked.mode = StorageMode.CLIENT
    locked.refresh_client(encode_cookie(stored.identity), email="u0@example.com")
    generated = len(operator.generate_calls)
    login = locked.login("u0", "u0@example.com", None, PrivacySettings(True, ""))
    assert login.status is LoginStatus.OPTOUT and len(operator.generate_calls) == generated


def test_past_its_limit_an_unrecorded_login_optout_answers_the_stores_refusal(
    locked: Publisher, request: pytest.FixtureRequest
) -> None:
    locked.unrecorded_optouts = UnrecordedOptOuts(limit=1)
    _login_answered_optout(locked)
    operator = locked.operator
    assert isinstance(operator, FakeOperator)
    operator.optout_keys.add(_key("u1@example.com"))
    with pytest.raises(StoreUnavailable) as caught:
        locked.login("u1", "u1@example.com", None, PrivacySettings(True, ""))
    assert caught.value.reason == _param(request)
    assert len(locked.unrecorded_optouts) == 1


def test_a_login_optout_the_store_refused_is_recorded_by_the_callers_retry_and_survives_restart(
    refusing: Refusing, tmp_path: Path
) -> None:
    """The held opt-out lives in memory only: the login answered the store's refusal so the
    caller tries again. Its retry (no operator call) records it once the store takes writes,
    and a restarted publisher then never serves the identity stored before."""
    pub = refusing.pub
    clock, operator = pub.clock, pub.operator
    assert isinstance(clock, ManualClock) and isinstance(operator, FakeOperator)
    clock.advance(-HOUR)  # the stored identity is not due: no refresh would catch the opt-out
    _login_answered_optout(pub)
    refusing.heal()
    generated = len(operator.generate_calls)
    retry = pub.login("u0", "u0@example.com", None, PrivacySettings(True, ""))
    assert retry.status is LoginStatus.OPTOUT and len(operator.generate_calls) == generated
    pub.close()
    pub.store.close()
    reopened = SqliteStore(tmp_path)
    try:
        after = Publisher(store=reopened, operator=operator, ssp=FakeSsp(), clock=clock)
        token = after.get_advertising_token("u0")
        assert token.status is TokenStatus.OPTOUT and token.advertising_token == ""
    finally:
        reopened.close()


def test_a_stop_records_held_opt_outs_if_the_store_takes_writes_again(
    refusing: Refusing, tmp_path: Path
) -> None:
    pub = refusing.pub
    key = _login_answered_optout(pub)
    refusing.heal()  # the disk has room again, but no write has come since
    pub.close()
    assert len(pub.unrecorded_optouts) == 0
    pub.store.close()
    reopened = SqliteStore(tmp_path)
    try:
        assert reopened.is_operator_optout(key) and reopened.ended_status("u0") == "OPTOUT"
    finally:
        reopened.close()


def test_a_stop_does_not_wait_long_for_a_store_still_refusing(refusing: Refusing) -> None:
    pub = refusing.pub
    _login_answered_optout(pub)
    started = time.monotonic()
    pub.close()
    assert time.monotonic() - started < 5  # the last try gives up; the store's wait is 0.3 s
    assert len(pub.unrecorded_optouts) == 1  # dropped at the exit, the operator still has it
