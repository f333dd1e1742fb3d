"""A slow operator holds at most `operator_calls_max` callers' calls; the next is answered at
once as if the operator were unreachable, so the server's threads stay free for calls that
never ask it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from publisher_svc.model import PrivacySettings
from publisher_svc.publisher import LoginStatus, Publisher, TokenStatus
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


def test_calls_past_the_bound_are_refused_at_once_and_held_tokens_still_served(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    store = SqliteStore(tmp_path)
    pub = Publisher(store=store, operator=op, ssp=FakeSsp(), clock=clock, operator_calls_max=2)
    try:
        assert pub.login("held", "held@example.com", None, OK).status is LoginStatus.SUCCESS
        held = pub.get_advertising_token("held").advertising_token
        clock.advance(2 * HOUR)  # due for refresh (refresh_from 1 h), unexpired (3 days)

        op.gate = threading.Event()  # the operator stops answering
        with ThreadPoolExecutor(2) as pool:
            stuck = [
                pool.submit(pub.login, f"s{i}", f"s{i}@example.com", None, OK) for i in range(2)
            ]
            _until(lambda: op.in_flight == 2)

            with pytest.raises(ServiceError) as refused:
                pub.login("late", "late@example.com", None, OK)
            assert refused.value.kind is ErrorKind.UNAVAILABLE
            assert refused.value.reason == "OPERATOR_UNAVAILABLE"
            assert "too many calls" in refused.value.message
            token = pub.get_advertising_token("held")  # due, but no slot: the held token
            assert (token.status, token.advertising_token) == (TokenStatus.SUCCESS, held)
            assert not token.refreshed
            assert op.peak_in_flight == 2  # neither reached the operator
            readings = pub.readings()
            assert readings["operator_calls_waiting"] == 2
            assert readings["operator_calls_shed"] == 2

            # The background refresher's calls run on threads of their own: not bounded.
            background = threading.Thread(
                target=pub.refresh_stored, args=("held",), kwargs={"by_user": False}
            )
            background.start()
            _until(lambda: op.in_flight == 3)

            op.gate.set()
            assert [f.result(10).status for f in stuck] == [LoginStatus.SUCCESS] * 2
            background.join(10)
        assert pub.readings()["operator_calls_waiting"] == 0
        assert pub.login("late", "late@example.com", None, OK).status is LoginStatus.SUCCESS
    finally:
        pub.close()
        store.close()


def test_the_bound_must_allow_a_call() -> None:
    with pytest.raises(ValueError, match="operator_calls_max"):
        Publisher(
            store=None,  # type: ignore[arg-type]  # refused before any use
            operator=FakeOperator(ManualClock(T0)),
            ssp=FakeSsp(),
            clock=ManualClock(T0),
            operator_calls_max=0,
        )
