"""call_with_retry with its caller's deadline: each attempt gets at most the time left, and no
attempt or back-off starts once the deadline would pass."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from svc_common import call_context
from svc_common.backoff import Backoff
from svc_common.grpc_client import CallerDeadlineExceeded, RemoteError, call_with_retry


class _Failed(grpc.RpcError):  # type: ignore[misc]  # grpc is untyped: RpcError is Any
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return ""

    def trailing_metadata(self) -> None:
        return None


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _failing(clock: _Clock, code: grpc.StatusCode, timeouts: list[float]) -> Any:
    def call(request: Any, timeout: float, metadata: Any) -> Any:
        timeouts.append(timeout)
        clock.now += timeout  # the attempt used all the time it had
        raise _Failed(code)

    return call


def test_an_attempt_gets_the_time_left_and_its_timeout_is_the_callers() -> None:
    clock, timeouts = _Clock(), list[float]()
    with pytest.raises(CallerDeadlineExceeded) as caught:
        call_with_retry(
            _failing(clock, grpc.StatusCode.DEADLINE_EXCEEDED, timeouts),
            None,
            timeout_s=5.0,
            deadline=clock.now + 0.3,
            monotonic=clock,
        )
    assert timeouts == [pytest.approx(0.3)]
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_no_retry_once_its_back_off_would_pass_the_deadline() -> None:
    """And the peer's failure is the answer: the deadline has not passed (a caller with 80 ms
    left was told it had, while the operator was down)."""
    clock, timeouts, slept = _Clock(), list[float](), list[float]()
    with pytest.raises(RemoteError) as caught:
        call_with_retry(
            _failing(clock, grpc.StatusCode.UNAVAILABLE, timeouts),
            None,
            timeout_s=0.1,
            attempts=3,
            backoff=Backoff(base_s=0.05, cap_s=0.05, rng=lambda: 1.0),
            sleep=slept.append,
            deadline=clock.now + 0.2,
            monotonic=clock,
        )
    # 0.1 s, a 0.05 s back-off (slept, not moving the fake clock), then too little left.
    assert len(timeouts) == 2 and slept == [0.05]
    assert not isinstance(caught.value, CallerDeadlineExceeded)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_no_attempt_after_the_deadline() -> None:
    clock, timeouts = _Clock(), list[float]()
    with pytest.raises(CallerDeadlineExceeded):
        call_with_retry(
            _failing(clock, grpc.StatusCode.UNAVAILABLE, timeouts),
            None,
            timeout_s=1.0,
            deadline=clock.now,
            monotonic=clock,
        )
    assert timeouts == []


def test_the_peers_own_timeout_is_not_the_callers_deadline() -> None:
    """A deadline further off than the timeout: a timed-out attempt is the peer's failure."""
    clock, timeouts = _Clock(), list[float]()
    with pytest.raises(RemoteError) as caught:
        call_with_retry(
            _failing(clock, grpc.StatusCode.DEADLINE_EXCEEDED, timeouts),
            None,
            timeout_s=1.0,
            deadline=clock.now + 10,
            monotonic=clock,
        )
    assert not isinstance(caught.value, CallerDeadlineExceeded)
    assert timeouts == [1.0]


def test_the_served_calls_request_id_goes_on_to_the_peer() -> None:
    # One request reads the same in every service's log (the publisher's Login, the
    # operator's GenerateToken it made).
    sent: list[Any] = []

    def call(request: Any, timeout: float, metadata: Any) -> str:
        sent.append(metadata)
        return "ok"

    auth = (("authorization", "Bearer k"),)
    call_context.begin(request_id="req-10", method="/p.S/Login")
    try:
        assert call_with_retry(call, None, timeout_s=1, metadata=auth) == "ok"
    finally:
        call_context.end()
    assert call_with_retry(call, None, timeout_s=1, metadata=auth) == "ok"  # outside a call
    assert sent == [(*auth, ("x-request-id", "req-10")), auth]
