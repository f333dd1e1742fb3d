"""The `peer_failed` warning: a publisher whose operator or SSP is down or refuses it showed
nothing at --log-level WARNING, its failures being only on the per-call lines (info). Now one
warning per peer and reason, then at most one a FAILURE_LOG_INTERVAL_S with a count; never for
the caller's own faults or the publisher's own shedding."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from publisher_svc.caller_deadline import caller_deadline_error
from publisher_svc.limits import OPERATOR_BUSY, SSP_BUSY
from publisher_svc.model import PeerError, PrivacySettings
from publisher_svc.publisher import Publisher
from publisher_svc.store import SqliteStore
from svc_common import call_context
from svc_common.clock import ManualClock
from svc_common.errors import TLS_HANDSHAKE_FAILED, ServiceError
from svc_common.failure_log import FAILURE_LOG_INTERVAL_S
from svc_common.logging import configure_logging
from tests.unit.publisher.fakes import FakeOperator, FakeSsp

T0 = 1_700_000_000_000
OK = PrivacySettings(True, "")
EMAIL = "someone@example.com"


@dataclass
class Env:
    clock: ManualClock
    op: FakeOperator
    ssp: FakeSsp
    pub: Publisher


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    clock = ManualClock(T0)
    op, ssp, store = FakeOperator(clock), FakeSsp(), SqliteStore(tmp_path)
    # The hand-moved clock for intervals too: the test decides when 30 s have passed.
    pub = Publisher(store=store, operator=op, ssp=ssp, clock=clock, monotonic=clock)
    yield Env(clock, op, ssp, pub)
    pub.close()
    store.close()


def _login(e: Env, user: str = "u1", privacy: PrivacySettings = OK) -> ServiceError | None:
    try:
        e.pub.login(user, EMAIL, None, privacy)
    except ServiceError as err:
        return err
    return None


def _ad(e: Env) -> ServiceError | None:
    try:
        e.pub.serve_ad(
            user_id="u1", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
        )
    except ServiceError as err:
        return err
    return None


def _warned(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [x for x in logs if x["event"] == "peer_failed"]


def test_a_rejected_key_is_a_warning_at_log_level_warning(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # The on-call review's repro: an operator key of the wrong role, --log-level WARNING,
    # two Logins: the log held nothing of it.
    env.op.refuse = True
    configure_logging("WARNING", service="test")
    try:
        capsys.readouterr()
        assert _login(env, "u1") is not None and _login(env, "u2") is not None
        err = capsys.readouterr().err
    finally:
        configure_logging("INFO")
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert [x["event"] for x in lines] == ["peer_failed"]
    line = lines[0]
    assert line["level"] == "warning"
    assert {k: line[k] for k in ("peer", "code", "reason", "peer_code", "peer_reason")} == {
        "peer": "operator",
        "code": "FAILED_PRECONDITION",
        "reason": "OPERATOR_REJECTED",
        "peer_code": "PERMISSION_DENIED",
        "peer_reason": "ROLE_REQUIRED",
    }
    assert line["failures_since_last"] == 1
    assert EMAIL not in err


def test_a_burst_of_failures_is_one_line_then_a_count(env: Env) -> None:
    env.ssp.down = True
    with capture_logs() as logs:
        for _ in range(5):
            err = _ad(env)
            assert err is not None and err.reason == "SSP_UNAVAILABLE"
        first = list(_warned(logs))
        env.clock.advance(int(FAILURE_LOG_INTERVAL_S * 1000) - 1000)
        assert _ad(env) is not None  # 29 s on: still held back
        env.ssp.down = False
        assert _ad(env) is None  # answered, inside the interval: nothing yet
        held = list(_warned(logs))
        env.clock.advance(2000)
        assert _ad(env) is None  # the SSP's next call after the interval writes the count
        after = list(_warned(logs))
        env.ssp.down = True
        assert _ad(env) is not None  # a new failure just after that line: held back again
    assert [(x["peer"], x["reason"], x["failures_since_last"]) for x in first] == [
        ("ssp", "SSP_UNAVAILABLE", 1)
    ]
    assert held == first
    assert [x["failures_since_last"] for x in after] == [1, 5]
    assert _warned(logs) == after


def test_each_peer_and_reason_has_its_own_line(env: Env) -> None:
    env.op.down, env.op.down_reason = True, TLS_HANDSHAKE_FAILED
    with capture_logs() as logs:
        _login(env, "u1")
        env.op.down = False
        env.op.refuse = True
        _login(env, "u2")
        env.ssp.refusal = ("UNAUTHENTICATED", "UNKNOWN_API_KEY")
        _ad(env)
        _login(env, "u3")
        _ad(env)
    seen = [
        (x["peer"], x["reason"], x.get("peer_failure"), x.get("peer_code"), x.get("peer_reason"))
        for x in _warned(logs)
    ]
    assert seen == [
        ("operator", "OPERATOR_UNAVAILABLE", TLS_HANDSHAKE_FAILED, None, None),
        ("operator", "OPERATOR_REJECTED", None, "PERMISSION_DENIED", "ROLE_REQUIRED"),
        ("ssp", "SSP_REJECTED", None, "UNAUTHENTICATED", "UNKNOWN_API_KEY"),
    ]
    assert all(x["log_level"] == "warning" for x in _warned(logs))


def test_a_peers_free_text_reason_is_not_logged(env: Env) -> None:
    env.ssp.refusal = ("PERMISSION_DENIED", "key sk-live-123 is not allowed")
    with capture_logs() as logs:
        _ad(env)
    (line,) = _warned(logs)
    assert line["peer_reason"] == "UNRECOGNISED" and "sk-live" not in repr(logs)


def test_the_callers_own_faults_and_our_shedding_are_not_warned_of(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    with capture_logs() as logs:
        # The caller's input, refused by the operator and by the SSP.
        env.op.invalid_input_reason = "INVALID_TCF_CONSENT_STRING"
        err = _login(env, "u1", PrivacySettings(True, "not-tcf"))
        assert err is not None and err.reason == "INVALID_TCF_CONSENT_STRING"
        env.op.invalid_input_reason = ""
        env.ssp.refusal = ("PERMISSION_DENIED", "INVENTORY_NOT_ALLOWED")
        err = _ad(env)
        assert err is not None and err.reason == "INVENTORY_NOT_ALLOWED"
        env.ssp.refusal = None

        # The caller's deadline passed while it waited on a peer.
        def too_late(*_: object) -> None:
            raise caller_deadline_error("operator")

        monkeypatch.setattr(env.op, "generate", too_late)
        err = _login(env, "u2")
        assert err is not None and err.reason == "CALLER_DEADLINE"

        # Our own load shedding: the peer was not asked.
        def busy(*_: object) -> None:
            raise PeerError("operator", "UNAVAILABLE", OPERATOR_BUSY, unavailable=True)

        monkeypatch.setattr(env.op, "generate", busy)
        err = _login(env, "u3")
        assert err is not None and err.reason == OPERATOR_BUSY

        def ssp_busy(*_: object) -> None:
            raise PeerError("ssp", "UNAVAILABLE", SSP_BUSY, unavailable=True)

        monkeypatch.setattr(env.ssp, "submit_impression", ssp_busy)
        err = _ad(env)
        assert err is not None and err.reason == SSP_BUSY
    assert _warned(logs) == []


def test_a_held_back_line_takes_nothing_of_the_failure_it_is_written_with(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # A held-back line is written during another call, whose context it carries (request id):
    # never the peer_code / peer_failure that call's own failure binds to it.
    def login(user: str) -> None:
        call_context.begin(request_id=f"login-{user}", method="/p.S/Login")
        try:
            _login(env, user)
        finally:
            call_context.end()

    configure_logging("WARNING", service="test")  # the real chain: the call's fields merged
    try:
        capsys.readouterr()
        env.op.refuse = True
        login("u1")
        login("u2")  # held back
        env.clock.advance(int(FAILURE_LOG_INTERVAL_S * 1000) + 1000)
        env.op.down, env.op.down_reason = True, TLS_HANDSHAKE_FAILED
        login("u3")  # its own line, and u2's written with it
        login("u4")  # held back
        env.clock.advance(int(FAILURE_LOG_INTERVAL_S * 1000) + 1000)
        env.op.down = False
        login("u5")  # rejected: its own line, and u4's
        err = capsys.readouterr().err
    finally:
        configure_logging("INFO")
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    seen = [
        (x["request_id"], x["reason"], x.get("peer_failure"), x.get("peer_code"))
        for x in lines
        if x["event"] == "peer_failed"
    ]
    assert sorted(seen) == sorted(
        [
            ("login-u1", "OPERATOR_REJECTED", None, "PERMISSION_DENIED"),
            ("login-u3", "OPERATOR_UNAVAILABLE", TLS_HANDSHAKE_FAILED, None),
            ("login-u3", "OPERATOR_REJECTED", None, "PERMISSION_DENIED"),
            ("login-u5", "OPERATOR_REJECTED", None, "PERMISSION_DENIED"),
            ("login-u5", "OPERATOR_UNAVAILABLE", TLS_HANDSHAKE_FAILED, None),
        ]
    )
