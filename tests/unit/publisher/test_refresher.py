"""The background refresher with fake peers and an injected clock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from publisher_svc.model import PrivacySettings
from publisher_svc.publisher import Publisher
from publisher_svc.refresher import Refresher
from publisher_svc.results import LoginStatus, TokenStatus
from publisher_svc.store import SqliteStore
from svc_common.backoff import Backoff
from svc_common.clock import ManualClock
from tests.support.procs import wait_until
from tests.unit.publisher.fakes import DAY, HOUR, FakeOperator, FakeSsp

T0 = 1_700_000_000_000
OK = PrivacySettings(True, "")
Setup = tuple[ManualClock, FakeOperator, Publisher]


def _pub(tmp_path: Path, clock: ManualClock, op: FakeOperator) -> Publisher:
    return Publisher(store=SqliteStore(tmp_path), operator=op, ssp=FakeSsp(), clock=clock)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    pub = _pub(tmp_path, clock, op)
    yield clock, op, pub
    pub.store.close()


def _login_many(pub: Publisher, n: int) -> None:
    for i in range(n):
        pub.login(f"u{i}", f"user{i}@example.com", None, OK)


def test_refreshes_only_due_identities(setup: Setup) -> None:
    clock, op, pub = setup
    _login_many(pub, 3)
    clock.advance(30 * 60_000)
    pub.login("late", "late@example.com", None, OK)  # due 30 min after the others
    clock.advance(30 * 60_000)
    r = Refresher(pub, workers=2)
    try:
        assert r.run_once() == 3
        assert r.stats.refreshed == 3 and len(op.refresh_calls) == 3
        assert r.run_once() == 0  # refreshed ones are due again only in an hour
        stored = pub.store.get("u0")
        assert stored is not None and stored.identity.refresh_from == clock.now_ms() + HOUR
    finally:
        r.stop()


def test_bounded_concurrency(setup: Setup) -> None:
    clock, op, pub = setup
    _login_many(pub, 40)
    clock.advance(HOUR)
    op.delay_s = 0.01
    r = Refresher(pub, workers=4)
    try:
        assert r.run_once() == 40
    finally:
        r.stop()
    assert r.stats.refreshed == 40
    assert 1 < op.peak_in_flight <= 4
    assert r.stats.peak_in_flight <= 4


def test_operator_down_keeps_token_and_backs_off(setup: Setup) -> None:
    clock, op, pub = setup
    _login_many(pub, 1)
    token = pub.get_advertising_token("u0").advertising_token
    clock.advance(HOUR)
    op.down = True
    backoff = Backoff(base_s=1.0, cap_s=8.0, rng=lambda: 1.0)
    r = Refresher(pub, workers=1, backoff=backoff, circuit_open_s=0)
    try:
        delays = []
        for _ in range(6):
            assert r.run_once() == 1
            stored = pub.store.get("u0")
            assert stored is not None
            delay = pub.store.due(10**15, 1)[0].next_attempt_at - clock.now_ms()
            delays.append(delay)
            clock.advance(delay)
        # capped exponential: 1 s, 2 s, 4 s, 8 s, 8 s, 8 s (rng fixed at 1.0)
        assert delays == [1000, 2000, 4000, 8000, 8000, 8000]
        assert r.stats.deferred == 6
        # the still-valid token is still served
        assert pub.get_advertising_token("u0").advertising_token == token
        op.down = False
        assert r.run_once() == 1
        assert r.stats.refreshed == 1
        assert pub.store.get("u0").failed_attempts == 0  # type: ignore[union-attr]  # a None fails the test here anyway
    finally:
        r.stop()


def test_jitter_spreads_retries(setup: Setup) -> None:
    clock, op, pub = setup
    _login_many(pub, 20)
    clock.advance(HOUR)
    op.down = True
    r = Refresher(pub, workers=4)
    try:
        r.run_once()
    finally:
        r.stop()
    times = {d.next_attempt_at for d in pub.store.due(10**15, 100)}
    assert len(times) > 10  # not all at once
    assert all(clock.now_ms() + 500 <= t <= clock.now_ms() + 1000 for t in times)


def test_optout_and_expiry_in_background(setup: Setup) -> None:
    clock, op, pub = setup
    _login_many(pub, 2)
    optout_key = op.generate_calls[0][0].key
    op.refresh_optout_keys.add(optout_key)
    clock.advance(HOUR)
    r = Refresher(pub, workers=2)
    try:
        r.run_once()
        assert r.stats.optouts == 1 and r.stats.refreshed == 1
        assert pub.store.get("u0") is None
        assert pub.store.is_operator_optout(optout_key)
        clock.advance(31 * DAY)
        r.run_once()
        assert r.stats.login_required == 1
        assert pub.store.count() == 0
    finally:
        r.stop()


def test_carries_on_after_restart(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    pub = _pub(tmp_path, clock, op)
    _login_many(pub, 5)
    clock.advance(HOUR)
    pub.store.close()  # "crash" before any refresh
    pub2 = _pub(tmp_path, clock, op)
    r = Refresher(pub2, workers=2)
    try:
        assert r.run_once() == 5
        assert r.stats.refreshed == 5
    finally:
        r.stop()
        pub2.store.close()


def test_thread_runs_and_stops(setup: Setup) -> None:
    clock, _op, pub = setup
    _login_many(pub, 3)
    clock.advance(HOUR)
    r = Refresher(pub, workers=2, poll_interval_s=0.01)
    r.start()
    try:
        assert wait_until(lambda: r.stats.refreshed == 3, 5)
    finally:
        r.stop()
    assert r._thread is not None and not r._thread.is_alive()


def test_circuit_breaker_spares_a_down_operator(setup: Setup) -> None:
    clock, op, pub = setup
    _login_many(pub, 30)
    clock.advance(HOUR)
    op.down = True
    r = Refresher(pub, workers=1, circuit_open_s=60)
    try:
        assert r.run_once() == 30
    finally:
        r.stop()
    assert len(op.refresh_calls) == 1  # the first failure opens the circuit
    assert r.stats.deferred == 30 and pub.store.count() == 30


def test_circuit_closes_after_its_window_on_the_injected_clock(setup: Setup) -> None:
    clock, op, pub = setup
    _login_many(pub, 5)
    clock.advance(HOUR)
    op.down = True
    r = Refresher(pub, workers=1, circuit_open_s=60, monotonic=clock)
    try:
        assert r.run_once() == 5
        assert len(op.refresh_calls) == 1 and r.stats.deferred == 5
        op.down = False
        # Past every identity's backoff (at most 2 s here) but inside the 60 s window: still
        # deferred without a call, however long the test really takes.
        clock.advance(30_000)
        assert r.run_once() == 5
        assert len(op.refresh_calls) == 1 and r.stats.deferred == 10
        # Past the window: the operator is tried again and every identity refreshed.
        clock.advance(31_000)
        assert r.run_once() == 5
        assert len(op.refresh_calls) == 6 and r.stats.refreshed == 5
    finally:
        r.stop()


def test_metrics_show_an_operator_outage_between_the_circuits_windows(setup: Setup) -> None:
    """On-call review: refresh_circuit_open, read every 0.5 s for 20 s of an outage, was 0 in
    40 samples of 40: the circuit opens for a second, between passes that back off."""
    clock, op, pub = setup
    _login_many(pub, 2)
    clock.advance(HOUR)
    op.down = True
    r = Refresher(pub, workers=1, circuit_open_s=1, monotonic=clock)
    try:
        assert r.run_once() == 2
        clock.advance(5_000)  # the window is over; the operator is still down
        readings = r.readings()
        assert readings["refresh_circuit_open"] == 0.0
        assert readings["refresh_operator_failures"] == 1.0
        clock.advance(HOUR)  # past every backoff: the next pass asks again, and fails again
        assert r.run_once() == 2
        assert r.readings()["refresh_operator_failures"] == 2.0
        # A refusal is an answer: the operator is reachable (diff review).
        op.down, op.refuse = False, True
        clock.advance(HOUR)
        assert r.run_once() == 2
        assert r.readings()["refresh_operator_failures"] == 0.0
        clock.advance(HOUR)
        op.down, op.refuse = True, False
        assert r.run_once() == 2
        assert r.readings()["refresh_operator_failures"] == 1.0
        op.down = False
        clock.advance(HOUR)
        assert r.run_once() == 2 and r.stats.refreshed == 2
        assert r.readings()["refresh_operator_failures"] == 0.0
    finally:
        r.stop()


def test_an_identity_the_refresher_ended_is_reported_as_such(setup: Setup) -> None:
    clock, op, pub = setup
    for user in ("oo", "ex", "lo"):
        pub.login(user, f"{user}@example.com", None, OK)
    stored = pub.store.get("oo")
    assert stored is not None  # just logged in
    op.refresh_optout_keys.add(stored.dii_key)
    r = Refresher(pub, workers=2)
    try:
        clock.advance(HOUR)
        r.run_once()  # oo: opt-out; the others refreshed
        clock.advance(31 * DAY)
        r.run_once()  # the others' refresh tokens have expired
    finally:
        r.stop()
    assert r.stats.optouts == 1 and r.stats.login_required == 2
    assert pub.get_advertising_token("oo").status is TokenStatus.OPTOUT
    assert pub.get_advertising_token("ex").status is TokenStatus.LOGIN_REQUIRED
    assert pub.get_advertising_token("nobody").status is TokenStatus.NO_IDENTITY
    pub.logout("lo")  # a logout forgets it
    assert pub.get_advertising_token("lo").status is TokenStatus.NO_IDENTITY
    # and so does a new login
    assert pub.login("ex", "ex@example.com", None, OK).status is LoginStatus.SUCCESS
    assert pub.get_advertising_token("ex").status is TokenStatus.SUCCESS


def _used_flag_settles(pub: Publisher, user_id: str) -> bool:
    """Waits for the off-path record of a use (Publisher._note_use) to land."""
    return wait_until(lambda: pub.store.get(user_id).used_since_refresh, 5.0)  # type: ignore[union-attr]  # a None fails the test here anyway


def _refreshed_then_rested(clock: ManualClock, pub: Publisher, r: Refresher) -> None:
    """One stored user, refreshed once in the background by `r` and then left unused: it
    rests."""
    _login_many(pub, 1)
    clock.advance(HOUR)
    assert r.run_once() == 1 and r.stats.refreshed == 1  # logged in: the user was here
    clock.advance(HOUR)
    assert r.run_once() == 1 and r.stats.rested == 1  # nobody came since: no call


def test_an_identity_nobody_uses_is_refreshed_once_then_rests_until_its_chain_ends(
    setup: Setup,
) -> None:
    clock, op, pub = setup
    r = Refresher(pub, workers=2)
    try:
        _refreshed_then_rested(clock, pub, r)
        assert len(op.refresh_calls) == 1
        stored = pub.store.get("u0")
        assert stored is not None
        assert stored.next_attempt_at == stored.identity.refresh_expires
        clock.advance(10 * DAY)
        assert r.run_once() == 0  # resting: not due again before refresh_expires
        clock.advance(stored.identity.refresh_expires - clock.now_ms())
        assert r.run_once() == 1
        assert len(op.refresh_calls) == 1  # ended by the rules, without the operator
        assert pub.store.get("u0") is None
        assert r.stats.login_required == 1
        assert pub.get_advertising_token("u0").status is TokenStatus.LOGIN_REQUIRED
    finally:
        r.stop()


def test_a_user_who_comes_back_wakes_a_resting_identity(setup: Setup) -> None:
    clock, op, pub = setup
    r = Refresher(pub, workers=2)
    try:
        _refreshed_then_rested(clock, pub, r)
        # Ten days on, the token has expired: the user's own request refreshes it at once.
        clock.advance(10 * DAY)
        token = pub.get_advertising_token("u0")
        assert token.status is TokenStatus.SUCCESS and token.refreshed
        assert len(op.refresh_calls) == 2
        # ... and counts as a use, so the background keeps it fresh again.
        clock.advance(HOUR)
        assert r.run_once() == 1 and r.stats.refreshed == 2
        assert len(op.refresh_calls) == 3
    finally:
        r.stop()


def test_an_ad_shown_between_background_refreshes_keeps_the_identity_refreshed(
    setup: Setup,
) -> None:
    clock, _, pub = setup
    _login_many(pub, 1)
    r = Refresher(pub, workers=2)
    try:
        clock.advance(HOUR)
        r.run_once()  # refreshed in the background: unused from now on
        stored = pub.store.get("u0")
        assert stored is not None and not stored.used_since_refresh
        pub.serve_ad(
            user_id="u0", cookie_value=None, placement_id="p", page_domain="d.com",
            floor_price=0,
        )  # fmt: skip
        assert _used_flag_settles(pub, "u0")
        clock.advance(HOUR)
        assert r.run_once() == 1 and r.stats.refreshed == 2 and r.stats.rested == 0
    finally:
        r.stop()


class _SlowToMarkStore(SqliteStore):
    """Holds `mark_used` until released: the impression's own refresh then runs while the
    identity still rests (its next attempt at refresh_expires), as when the pool is busy."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.release = threading.Event()

    def mark_used(self, user_id: str) -> bool:
        self.release.wait(5.0)
        return super().mark_used(user_id)


@pytest.mark.parametrize("mark_lands_first", [True, False])
def test_an_ad_for_a_resting_identity_due_for_refresh_refreshes_it_first(
    tmp_path: Path, mark_lands_first: bool
) -> None:
    """A resting identity's next attempt lies at refresh_expires: that is no failure backoff,
    so the user's impression refreshes it (within the budget) rather than send the held one,
    whether or not the record of the use has landed by then."""
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    store = _SlowToMarkStore(tmp_path)
    if mark_lands_first:
        store.release.set()
    pub = Publisher(store=store, operator=op, ssp=FakeSsp(), clock=clock)
    r = Refresher(pub, workers=2)
    try:
        _refreshed_then_rested(clock, pub, r)
    finally:
        r.stop()
    clock.advance(30 * 60_000)  # due for a refresh, the held token still unexpired
    held = pub.store.get("u0").identity.advertising_token  # type: ignore[union-attr]  # a None fails the test here anyway
    r2 = pub.serve_ad(
        user_id="u0", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
    )
    store.release.set()
    try:
        assert r2.token_sent and len(op.refresh_calls) == 2
        sent = pub.ssp.impressions[-1].advertising_token  # type: ignore[attr-defined]  # the FakeSsp
        assert sent != held
        assert _used_flag_settles(pub, "u0")  # the held-back record lands too
    finally:
        pub.close()
        store.close()


def test_a_pass_that_fails_does_not_end_the_background_thread(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's `due` query can fail (a disk hiccup, a lock held too long); the next poll
    # must still run, or no identity is ever refreshed again until a restart.
    clock, _op, pub = setup
    _login_many(pub, 3)
    clock.advance(HOUR)
    real_due = pub.store.due
    calls = []

    def flaky_due(now_ms: int, limit: int) -> Any:
        calls.append(now_ms)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_due(now_ms, limit)

    monkeypatch.setattr(pub.store, "due", flaky_due)
    r = Refresher(pub, workers=2, poll_interval_s=0.01)
    r.start()
    try:
        assert wait_until(lambda: r.stats.refreshed == 3, 5)
    finally:
        r.stop()
    assert len(calls) >= 2


def test_an_unexpected_error_for_one_identity_defers_it_and_spares_the_others(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, op, pub = setup
    _login_many(pub, 3)
    clock.advance(HOUR)
    broken = pub.store.get("u1")
    assert broken is not None
    real_refresh = op.refresh

    def refresh(token: str) -> Any:
        if token == broken.identity.refresh_token:
            raise RuntimeError("a bug")
        return real_refresh(token)

    monkeypatch.setattr(op, "refresh", refresh)
    r = Refresher(pub, workers=2)
    try:
        assert r.run_once() == 3
        assert (r.stats.refreshed, r.stats.deferred) == (2, 1)
        # Left as it was: due again at the next poll, not lost.
        assert pub.store.get("u1") == broken
    finally:
        r.stop()
