"""The refresh decision at each point of an identity's life, with an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher_svc.model import Identity
from publisher_svc.publisher import Publisher
from publisher_svc.refresh_policy import Decision, decide, usable_without_refresh
from publisher_svc.results import StepKind, TokenStatus
from publisher_svc.store import SqliteStore
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.publisher.fakes import DAY, HOUR, FakeOperator, FakeSsp

T0 = 1_700_000_000_000
PolicyEnv = tuple[ManualClock, FakeOperator, Publisher, Identity]
IDENT = Identity("A4tok", "rt", T0 + 3 * DAY, T0 + HOUR, T0 + 30 * DAY, "k")


@pytest.mark.parametrize(
    ("now", "decision", "usable"),
    [
        (T0, Decision.USE, True),
        (T0 + HOUR - 1, Decision.USE, True),
        (T0 + HOUR, Decision.REFRESH, True),  # refresh_from reached
        (T0 + 2 * DAY, Decision.REFRESH, True),  # between refresh_from and identity_expires
        (T0 + 3 * DAY, Decision.REFRESH, False),  # identity_expires reached
        (T0 + 10 * DAY, Decision.REFRESH, False),  # after identity_expires
        (T0 + 30 * DAY, Decision.LOGIN_REQUIRED, False),  # refresh_expires reached
        (T0 + 31 * DAY, Decision.LOGIN_REQUIRED, False),
    ],
)
def test_decide(now: int, decision: Decision, usable: bool) -> None:
    assert decide(IDENT, now) is decision
    assert usable_without_refresh(IDENT, now) is usable


def test_expired_token_is_never_used_even_with_a_late_refresh_from() -> None:
    odd = Identity("A4tok", "rt", T0 + HOUR, T0 + 2 * HOUR, T0 + DAY, "k")
    assert decide(odd, T0 + HOUR) is Decision.REFRESH


@pytest.fixture
def env(tmp_path: Path) -> Iterator[PolicyEnv]:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    store = SqliteStore(tmp_path)
    pub = Publisher(store=store, operator=op, ssp=FakeSsp(), clock=clock)
    ident = op._issue("email:x")
    yield clock, op, pub, ident
    store.close()


def test_step_before_refresh_from_uses_without_calling(env: PolicyEnv) -> None:
    clock, op, pub, ident = env
    clock.advance(HOUR - 1)
    assert pub.step(ident).kind is StepKind.USE
    assert op.refresh_calls == []


def test_step_between_refresh_from_and_expiry_refreshes(env: PolicyEnv) -> None:
    clock, _op, pub, ident = env
    clock.advance(2 * HOUR)
    step = pub.step(ident)
    assert step.kind is StepKind.REFRESHED
    assert step.identity is not None and step.identity.refresh_token != ident.refresh_token


def test_step_between_refresh_from_and_expiry_operator_down_keeps_token(env: PolicyEnv) -> None:
    clock, op, pub, ident = env
    clock.advance(2 * HOUR)
    op.down = True
    step = pub.step(ident)
    assert step.kind is StepKind.STALE
    assert step.identity == ident


def test_step_after_identity_expires_operator_down_is_unavailable(env: PolicyEnv) -> None:
    clock, op, pub, ident = env
    clock.advance(3 * DAY)
    op.down = True
    with pytest.raises(ServiceError) as exc:
        pub.step(ident)
    assert exc.value.kind is ErrorKind.UNAVAILABLE
    assert exc.value.reason == "OPERATOR_UNAVAILABLE"


def test_step_after_identity_expires_refreshes(env: PolicyEnv) -> None:
    clock, _op, pub, ident = env
    clock.advance(3 * DAY + 1)
    assert pub.step(ident).kind is StepKind.REFRESHED


def test_step_after_refresh_expires_needs_login_without_calling(env: PolicyEnv) -> None:
    clock, op, pub, ident = env
    clock.advance(30 * DAY)
    assert pub.step(ident).kind is StepKind.LOGIN_REQUIRED
    assert op.refresh_calls == []


def test_token_status_values_cover_every_step() -> None:
    assert {s.value for s in TokenStatus} == {"SUCCESS", "NO_IDENTITY", "OPTOUT", "LOGIN_REQUIRED"}
