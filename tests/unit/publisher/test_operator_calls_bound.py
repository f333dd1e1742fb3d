"""A slow operator holds at most `operator_calls_max` callers' calls, a slow SSP at most
`ssp_calls_max` impressions; the next is answered at once as if the peer were unreachable, so
the server's threads stay free for calls that never ask it. A busy but answering operator makes
the next call wait for a slot instead."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from publisher_svc.caller_deadline import callers_deadline
from publisher_svc.limits import PEER_SLOW_S
from publisher_svc.model import PrivacySettings
from publisher_svc.publisher import Publisher
from publisher_svc.results import AdResult, LoginResult, LoginStatus, TokenStatus
from publisher_svc.store import SqliteStore
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.publisher.fakes import HOUR, FakeOperator, FakeSsp

T0 = 1_700_000_000_000
OK = PrivacySettings(True, "")


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@dataclass
class Env:
    clock: ManualClock
    op: FakeOperator
    pub: Publisher


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    store = SqliteStore(tmp_path)
    pub = Publisher(
        store=store,
        operator=op,
        ssp=FakeSsp(),
        clock=clock,
        monotonic=clock,
        operator_calls_max=2,
    )
    try:
        yield Env(clock, op, pub)
    finally:
        if op.gate is not None:
            op.gate.set()
        pub.close()
        store.close()


def _stuck_logins(env: Env, pool: ThreadPoolExecutor) -> list[Future[LoginResult]]:
    env.op.gate = threading.Event()  # the operator stops answering
    stuck = [pool.submit(env.pub.login, f"s{i}", f"s{i}@example.com", None, OK) for i in range(2)]
    _until(lambda: env.op.in_flight == 2)
    return stuck


def test_past_the_bound_a_slow_operator_is_not_asked_and_held_tokens_are_still_served(
    env: Env,
) -> None:
    pub, op, clock = env.pub, env.op, env.clock
    assert pub.login("held", "held@example.com", None, OK).status is LoginStatus.SUCCESS
    held = pub.get_advertising_token("held").advertising_token
    clock.advance(2 * HOUR)  # due for refresh (refresh_from 1 h), unexpired (3 days)
    with ThreadPoolExecutor(2) as pool:
        stuck = _stuck_logins(env, pool)
        clock.advance(int(PEER_SLOW_S * 1000))  # the operator has not answered in that long

        started = time.monotonic()
        with pytest.raises(ServiceError) as refused:
            pub.login("late", "late@example.com", None, OK)
        assert time.monotonic() - started < PEER_SLOW_S  # not waited for: refused at once
        assert refused.value.kind is ErrorKind.UNAVAILABLE
        assert refused.value.reason == "OPERATOR_BUSY"
        assert "is slow" in refused.value.message
        token = pub.get_advertising_token("held")  # due, but no slot: the held token
        assert (token.status, token.advertising_token) == (TokenStatus.SUCCESS, held)
        assert not token.refreshed
        assert op.peak_in_flight == 2  # neither reached the operator
        ad = pub.serve_ad(
            user_id="held",
            cookie_value=None,
            placement_id="p1",
            page_domain="example.com",
            floor_price=0.1,
        )
        assert ad.token_sent  # the held token, the impression's refresh not asked either
        _until(lambda: not pub._pending)
        stored = pub.store.get("held")
        assert stored is not None and stored.failed_attempts == 0  # not asked: no failure
        assert stored.next_attempt_at == stored.identity.refresh_from  # no back-off started
        readings = pub.readings()
        assert readings["operator_calls_waiting"] == 2
        assert readings["operator_calls_shed"] == 3  # the login, the token, the impression

        # The background refresher's calls run on threads of their own: not bounded.
        background = threading.Thread(
            target=pub.refresh_stored, args=("held",), kwargs={"by_user": False}
        )
        background.start()
        _until(lambda: op.in_flight == 3)

        assert op.gate is not None
        op.gate.set()
        assert [f.result(10).status for f in stuck] == [LoginStatus.SUCCESS] * 2
        background.join(10)
    assert pub.readings()["operator_calls_waiting"] == 0
    assert pub.login("late", "late@example.com", None, OK).status is LoginStatus.SUCCESS


def test_a_busy_operator_that_answers_makes_the_next_call_wait_not_fail(env: Env) -> None:
    pub, op = env.pub, env.op
    with ThreadPoolExecutor(3) as pool:
        stuck = _stuck_logins(env, pool)  # the slots taken, their calls young
        third = pool.submit(pub.login, "third", "third@example.com", None, OK)
        time.sleep(0.05)
        assert not third.done()  # waiting for a slot, not refused
        assert op.gate is not None
        op.gate.set()  # the operator answers: a slot frees
        assert third.result(10).status is LoginStatus.SUCCESS
        assert all(f.result(10).status is LoginStatus.SUCCESS for f in stuck)
    assert pub.readings()["operator_calls_shed"] == 0


def test_a_call_waits_for_a_slot_no_longer_than_its_callers_deadline(env: Env) -> None:
    pub, op = env.pub, env.op
    with ThreadPoolExecutor(2) as pool:
        stuck = _stuck_logins(env, pool)  # the slots taken, their calls young: a wait, not a shed
        started = time.monotonic()
        with callers_deadline(0.05), pytest.raises(ServiceError) as gave_up:
            pub.login("hurried", "hurried@example.com", None, OK)
        waited = time.monotonic() - started
        assert 0.04 <= waited < PEER_SLOW_S * 0.8  # its 50 ms, not the bound's 500 ms
        assert gave_up.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert gave_up.value.reason == "CALLER_DEADLINE"
        assert op.peak_in_flight == 2  # it never reached the operator
        assert pub.readings()["operator_calls_shed"] == 0  # not a busy operator's refusal
        assert op.gate is not None
        op.gate.set()
        assert all(f.result(10).status is LoginStatus.SUCCESS for f in stuck)


def _ad(pub: Publisher) -> AdResult:
    return pub.serve_ad(
        user_id="reader",
        cookie_value=None,
        placement_id="p1",
        page_domain="example.com",
        floor_price=0.1,
    )


def test_past_the_bound_a_slow_ssp_is_not_asked(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    gate = threading.Event()
    ssp = FakeSsp(gate=gate)  # the SSP stops answering
    store = SqliteStore(tmp_path)
    pub = Publisher(
        store=store,
        operator=FakeOperator(clock),
        ssp=ssp,
        clock=clock,
        monotonic=clock,
        ssp_calls_max=2,
    )
    try:
        assert pub.login("reader", "reader@example.com", None, OK).status is LoginStatus.SUCCESS
        with ThreadPoolExecutor(2) as pool:
            stuck = [pool.submit(_ad, pub) for _ in range(2)]
            _until(lambda: ssp.in_flight == 2)
            clock.advance(int(PEER_SLOW_S * 1000))  # the SSP has not answered in that long

            started = time.monotonic()
            with pytest.raises(ServiceError) as refused:
                _ad(pub)
            assert time.monotonic() - started < PEER_SLOW_S  # not waited for: refused at once
            assert refused.value.kind is ErrorKind.UNAVAILABLE
            assert refused.value.reason == "SSP_BUSY"
            assert "the SSP is slow" in refused.value.message
            assert ssp.in_flight == 2  # it never reached the SSP
            readings = pub.readings()
            assert (readings["ssp_calls_waiting"], readings["ssp_calls_shed"]) == (2, 1)
            assert readings["operator_calls_shed"] == 0  # the bounds are apart

            gate.set()
            assert all(f.result(10).token_sent for f in stuck)
        assert pub.readings()["ssp_calls_waiting"] == 0
        assert _ad(pub).token_sent
    finally:
        gate.set()
        pub.close()
        store.close()


@pytest.mark.parametrize("bound", ["operator_calls_max", "ssp_calls_max"])
def test_the_bound_must_allow_a_call(bound: str) -> None:
    with pytest.raises(ValueError, match=bound):
        Publisher(
            store=None,  # type: ignore[arg-type]  # refused before any use
            operator=FakeOperator(ManualClock(T0)),
            ssp=FakeSsp(),
            clock=ManualClock(T0),
            **{bound: 0},  # type: ignore[arg-type]  # an int, whichever bound is named
        )
