"""The publisher's domain rules with fake peers and an injected clock."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from publisher_svc.call_bound import CallBound
from publisher_svc.caller_deadline import callers_deadline
from publisher_svc.cookie import decode_cookie
from publisher_svc.limits import MAX_WAITING_PER_USER, OPERATOR_BUSY, PEER_SLOW_S
from publisher_svc.model import DiiKind, Identity, PrivacySettings, StorageMode, TokenDisposition
from publisher_svc.publisher import Publisher
from publisher_svc.results import AdResult, LoginStatus, Step, StepKind, TokenResult, TokenStatus
from publisher_svc.store import SqliteStore
from svc_common import call_context
from svc_common.backoff import Backoff
from svc_common.clock import ManualClock
from svc_common.errors import CONNECTION_CLOSED, TLS_HANDSHAKE_FAILED, ErrorKind, ServiceError
from svc_common.logging import configure_logging
from tests.unit.publisher.fakes import DAY, HOUR, FakeOperator, FakeSsp
from uid2_crypto.identity import identity_hash

T0 = 1_700_000_000_000
OK = PrivacySettings(True, "")
USER_HASH = "tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ="  # USER@example.com
PHONE_HASH = "EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4="  # +12345678901


@dataclass
class Env:
    clock: ManualClock
    op: FakeOperator
    ssp: FakeSsp
    store: SqliteStore
    pub: Publisher


def _env(tmp_path: Path, mode: StorageMode = StorageMode.SERVER, obo: int = 0) -> Env:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    ssp = FakeSsp()
    store = SqliteStore(tmp_path)
    pub = Publisher(
        store=store, operator=op, ssp=ssp, clock=clock, mode=mode, on_behalf_of_site_id=obo
    )
    return Env(clock, op, ssp, store, pub)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = _env(tmp_path)
    yield e
    e.pub.close()
    e.store.close()


@pytest.fixture
def client_env(tmp_path: Path) -> Iterator[Env]:
    e = _env(tmp_path, StorageMode.CLIENT)
    yield e
    e.pub.close()
    e.store.close()


def test_login_sends_only_the_normalised_hash(env: Env) -> None:
    r = env.pub.login("u1", "  USER@example.com", None, OK)
    assert r.status is LoginStatus.SUCCESS
    ((dii, privacy, obo),) = env.op.generate_calls
    assert dii.kind is DiiKind.EMAIL and dii.hash_b64 == USER_HASH
    assert privacy == OK and obo == 0
    assert env.store.get("u1") is not None
    assert r.refresh_from == T0 + HOUR


def test_login_phone(env: Env) -> None:
    env.pub.login("u1", None, "+12345678901", OK)
    assert env.op.generate_calls[0][0].hash_b64 == PHONE_HASH
    assert env.op.generate_calls[0][0].kind is DiiKind.PHONE


@pytest.mark.parametrize(
    ("email", "phone", "reason"),
    [
        ("a@ba@z.com", None, "INVALID_EMAIL"),
        ("", None, "INVALID_EMAIL"),
        (None, "555-555-5555", "INVALID_PHONE"),
        (None, None, "MISSING_DII"),
        # Past the operator's 1,024-character limit: refused here, before hashing.
        ("a" * 100_000 + "@example.com", None, "INVALID_EMAIL"),
        ("a" * 1013 + "@example.com", None, "INVALID_EMAIL"),  # 1025 characters
        (None, "+1" + "2" * 100_000, "INVALID_PHONE"),
    ],
)
def test_bad_dii_is_invalid_argument(
    env: Env, email: str | None, phone: str | None, reason: str
) -> None:
    with pytest.raises(ServiceError) as exc:
        env.pub.login("u1", email, phone, OK)
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == reason
    assert env.op.generate_calls == []


def test_missing_user_id(env: Env) -> None:
    with pytest.raises(ServiceError) as exc:
        env.pub.login("", "a@b.com", None, OK)
    assert exc.value.reason == "MISSING_USER_ID"


def test_privacy_settings_pass_through_and_consent(env: Env) -> None:
    r = env.pub.login("u1", "a@b.com", None, PrivacySettings(False, "TCFSTRING"))
    assert r.status is LoginStatus.INSUFFICIENT_CONSENT
    assert env.op.generate_calls[0][1] == PrivacySettings(False, "TCFSTRING")
    assert env.store.get("u1") is None


def test_operator_optout_is_recorded_and_generate_never_called_again(env: Env) -> None:
    env.op.optout_keys.add(f"email:{USER_HASH}")
    assert env.pub.login("u1", "user@example.com", None, OK).status is LoginStatus.OPTOUT
    assert env.pub.login("u2", "USER@example.com", None, OK).status is LoginStatus.OPTOUT
    assert len(env.op.generate_calls) == 1
    assert env.store.is_operator_optout(f"email:{USER_HASH}")
    # Both users' later token requests say why there is none, until they log in again.
    for user in ("u1", "u2"):
        assert env.pub.get_advertising_token(user).status is TokenStatus.OPTOUT
    assert env.pub.login("u1", "other@example.com", None, OK).status is LoginStatus.SUCCESS
    assert env.pub.get_advertising_token("u1").status is TokenStatus.SUCCESS


def test_site_optout_refuses_login_without_calling_operator(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    env.pub.set_site_optout("u1", True)
    assert env.store.get("u1") is None
    assert env.pub.login("u1", "a@b.com", None, OK).status is LoginStatus.SITE_OPTOUT
    assert len(env.op.generate_calls) == 1
    assert env.pub.get_advertising_token("u1").status is TokenStatus.NO_IDENTITY
    env.pub.set_site_optout("u1", False)
    assert env.pub.login("u1", "a@b.com", None, OK).status is LoginStatus.SUCCESS


def test_operator_unavailable_on_login(env: Env) -> None:
    env.op.down = True
    with pytest.raises(ServiceError) as exc:
        env.pub.login("u1", "a@b.com", None, OK)
    assert exc.value.kind is ErrorKind.UNAVAILABLE and exc.value.reason == "OPERATOR_UNAVAILABLE"


def _failed_login(env: Env, user: str, email: str) -> tuple[ServiceError, dict[str, Any]]:
    """The error a Login raised, and the fields its call's log line would carry."""
    call_context.begin(request_id="login-1", method="/p.S/Login")
    try:
        with pytest.raises(ServiceError) as failed:
            env.pub.login(user, email, None, OK)
        return failed.value, call_context.current()
    finally:
        call_context.end()


def test_operator_refusal_is_failed_precondition(env: Env) -> None:
    env.op.refuse = True
    exc, fields = _failed_login(env, "u1", "a@b.com")
    assert exc.kind is ErrorKind.FAILED_PRECONDITION
    assert exc.reason == "OPERATOR_REJECTED"
    # The call's line says what the operator answered: our key lacks a role, is disabled or
    # unknown, or the address is another service's (misconfiguration review: only the caller
    # heard it, in the ErrorInfo).
    assert (fields["peer_code"], fields["peer_reason"]) == (
        exc.metadata["peerCode"],
        exc.metadata["peerReason"],
    )
    assert fields["peer_code"] == "PERMISSION_DENIED"


def test_delegation_passes_on_behalf_of_site(tmp_path: Path) -> None:
    e = _env(tmp_path, obo=77)
    e.pub.login("u1", "a@b.com", None, OK)
    assert e.op.generate_calls[0][2] == 77
    e.store.close()


def test_get_token_lookup_then_refresh(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    first = env.pub.get_advertising_token("u1")
    assert first.status is TokenStatus.SUCCESS and not first.refreshed
    assert env.op.refresh_calls == []
    env.clock.advance(HOUR)
    second = env.pub.get_advertising_token("u1")
    assert second.refreshed and second.advertising_token != first.advertising_token
    third = env.pub.get_advertising_token("u1")
    assert third.advertising_token == second.advertising_token and not third.refreshed


def test_get_token_no_identity(env: Env) -> None:
    assert env.pub.get_advertising_token("nobody").status is TokenStatus.NO_IDENTITY


def test_refresh_optout_deletes_and_records(env: Env) -> None:
    env.pub.login("u1", "user@example.com", None, OK)
    env.op.refresh_optout_keys.add(f"email:{USER_HASH}")
    env.clock.advance(2 * HOUR)
    r = env.pub.get_advertising_token("u1")
    assert r.status is TokenStatus.OPTOUT and r.advertising_token == ""
    assert env.store.get("u1") is None
    assert env.pub.login("u1", "user@example.com", None, OK).status is LoginStatus.OPTOUT
    assert len(env.op.generate_calls) == 1


def test_expired_refresh_token_requires_login(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    env.clock.advance(30 * DAY)
    assert env.pub.get_advertising_token("u1").status is TokenStatus.LOGIN_REQUIRED
    assert env.store.get("u1") is None
    assert env.op.refresh_calls == []


def test_operator_says_expired_requires_login(env: Env) -> None:
    env.op.refresh_ms = 2 * HOUR
    env.pub.login("u1", "a@b.com", None, OK)
    # our copy says refresh_expires is later than the operator's view
    stored = env.store.get("u1")
    assert stored is not None
    env.clock.advance(2 * HOUR)
    assert env.pub.get_advertising_token("u1").status is TokenStatus.LOGIN_REQUIRED


def test_operator_down_keeps_valid_token_and_never_returns_expired(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    tok = env.pub.get_advertising_token("u1").advertising_token
    env.op.down = True
    env.clock.advance(2 * HOUR)
    r = env.pub.get_advertising_token("u1")
    assert r.status is TokenStatus.SUCCESS and r.advertising_token == tok and not r.refreshed
    env.clock.advance(3 * DAY)
    with pytest.raises(ServiceError) as exc:
        env.pub.get_advertising_token("u1")
    assert exc.value.reason == "OPERATOR_UNAVAILABLE"
    assert env.store.get("u1") is not None  # nothing lost
    env.op.down = False
    assert env.pub.get_advertising_token("u1").refreshed


def test_logout_deletes_without_calling_operator(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    calls = (len(env.op.generate_calls), len(env.op.refresh_calls))
    assert env.pub.logout("u1")
    assert not env.pub.logout("u1")
    assert (len(env.op.generate_calls), len(env.op.refresh_calls)) == calls
    assert env.pub.get_advertising_token("u1").status is TokenStatus.NO_IDENTITY


def test_client_mode_login_returns_cookie_and_stores_nothing(client_env: Env) -> None:
    r = client_env.pub.login("u1", "a@b.com", None, OK)
    assert r.status is LoginStatus.SUCCESS and r.cookie is not None
    assert r.cookie.name == "__uid_2"
    ident = decode_cookie(r.cookie.value)
    assert r.cookie.expires == ident.refresh_expires
    assert client_env.store.count() == 0


def test_client_refresh_round_trip(client_env: Env) -> None:
    cookie = client_env.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    same = client_env.pub.refresh_client(cookie.value)
    assert same.status is TokenStatus.SUCCESS and not same.refreshed
    assert same.cookie is not None and same.cookie.value == cookie.value
    client_env.clock.advance(HOUR)
    new = client_env.pub.refresh_client(cookie.value)
    assert new.refreshed and new.cookie is not None and new.cookie.value != cookie.value
    assert not new.clear_cookie


def test_client_refresh_optout_clears_and_records_when_dii_given(client_env: Env) -> None:
    cookie = client_env.pub.login("u1", "user@example.com", None, OK).cookie
    assert cookie is not None
    client_env.op.refresh_optout_keys.add(f"email:{USER_HASH}")
    client_env.clock.advance(HOUR)
    r = client_env.pub.refresh_client(cookie.value, "user@example.com")
    assert r.status is TokenStatus.OPTOUT and r.clear_cookie and r.cookie is None
    assert client_env.store.is_operator_optout(f"email:{USER_HASH}")


def test_client_refresh_expired_clears(client_env: Env) -> None:
    cookie = client_env.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    client_env.clock.advance(31 * DAY)
    r = client_env.pub.refresh_client(cookie.value)
    assert r.status is TokenStatus.LOGIN_REQUIRED and r.clear_cookie


def test_serve_ad_sends_token_exactly(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    tok = env.pub.get_advertising_token("u1").advertising_token
    r = env.pub.serve_ad(
        user_id="u1", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=1.0
    )
    assert r.token_sent and env.ssp.impressions[-1].advertising_token == tok
    assert r.decision.token_disposition is TokenDisposition.PASSED_THROUGH


def test_serve_ad_without_identity_still_goes_out(env: Env) -> None:
    r = env.pub.serve_ad(
        user_id="nobody", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
    )
    assert not r.token_sent and env.ssp.impressions[-1].advertising_token == ""


def test_serve_ad_anonymous_goes_out_but_an_empty_user_id_is_a_mistake(env: Env) -> None:
    r = env.pub.serve_ad(
        user_id=None, cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
    )
    assert not r.token_sent and len(env.ssp.impressions) == 1
    with pytest.raises(ServiceError) as exc:
        env.pub.serve_ad(
            user_id="", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
        )
    assert exc.value.reason == "MISSING_USER_ID" and len(env.ssp.impressions) == 1


def test_serve_ad_operator_down_with_expired_token_goes_out_without(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    env.op.down = True
    env.clock.advance(4 * DAY)
    r = env.pub.serve_ad(
        user_id="u1", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
    )
    assert not r.token_sent


def test_serve_ad_sends_the_refreshed_token_and_none_after_an_optout(env: Env) -> None:
    # A due refresh that answers within the budget decides what goes out: the new token, or,
    # when the operator answers opt-out, none (opt-out is honoured at once).
    env.pub.login("u1", "a@b.com", None, OK)
    before = env.store.get("u1")
    assert before is not None
    env.clock.advance(2 * HOUR)
    r = env.pub.serve_ad(
        user_id="u1", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
    )
    after = env.store.get("u1")
    assert after is not None and after.identity != before.identity
    sent = env.ssp.impressions[-1].advertising_token
    assert r.token_sent and sent == after.identity.advertising_token
    env.op.refresh_optout_keys.add(after.dii_key)
    env.clock.advance(2 * HOUR)
    r = env.pub.serve_ad(
        user_id="u1", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
    )
    assert not r.token_sent and env.ssp.impressions[-1].advertising_token == ""


def test_serve_ad_cookie_past_refresh_expires_goes_out_without_and_clears(
    client_env: Env,
) -> None:
    cookie = client_env.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    client_env.clock.advance(31 * DAY)
    r = client_env.pub.serve_ad(
        user_id=None, cookie_value=cookie.value, placement_id="p", page_domain="d", floor_price=0
    )
    assert not r.token_sent and r.clear_cookie
    assert client_env.ssp.impressions[-1].advertising_token == ""


def test_serve_ad_bad_cookie_goes_out_without_and_clears(client_env: Env) -> None:
    r = client_env.pub.serve_ad(
        user_id=None, cookie_value="garbage", placement_id="p", page_domain="d.com", floor_price=0
    )
    assert not r.token_sent and r.clear_cookie


def test_serve_ad_cookie_refreshes(client_env: Env) -> None:
    cookie = client_env.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    client_env.clock.advance(HOUR)
    r = client_env.pub.serve_ad(
        user_id=None, cookie_value=cookie.value, placement_id="p", page_domain="d", floor_price=0
    )
    assert r.token_sent and r.cookie is not None
    sent = client_env.ssp.impressions[-1].advertising_token
    assert decode_cookie(r.cookie.value).advertising_token == sent


def test_serve_ad_ssp_down_is_unavailable(env: Env) -> None:
    env.ssp.down = True
    with pytest.raises(ServiceError) as exc:
        env.pub.serve_ad(
            user_id="u", cookie_value=None, placement_id="p", page_domain="d", floor_price=0
        )
    assert exc.value.reason == "SSP_UNAVAILABLE"


def test_serve_ad_needs_domain_and_placement(env: Env) -> None:
    for kw in ({"placement_id": "", "page_domain": "d"}, {"placement_id": "p", "page_domain": ""}):
        with pytest.raises(ServiceError) as exc:
            env.pub.serve_ad(user_id="u", cookie_value=None, floor_price=0, **kw)
        assert exc.value.kind is ErrorKind.INVALID_ARGUMENT


def test_operator_refusing_the_callers_privacy_settings_is_invalid_argument(env: Env) -> None:
    env.op.invalid_input_reason = "INVALID_TCF_CONSENT_STRING"
    with pytest.raises(ServiceError) as exc:
        env.pub.login("u1", "a@b.com", None, PrivacySettings(True, "not-tcf"))
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT
    assert exc.value.reason == "INVALID_TCF_CONSENT_STRING"
    assert env.store.get("u1") is None


def test_dii_at_the_operators_limit_is_hashed(env: Env) -> None:
    email = "a" * 1012 + "@example.com"  # 1024 characters
    assert env.pub.login("u1", email, None, OK).status is LoginStatus.SUCCESS


@pytest.mark.parametrize("email", ["a\x00b@example.com", "a\nb@example.com", "a@example.com\n"])
def test_control_characters_in_an_email_are_hashed_as_the_operator_would(
    env: Env, email: str
) -> None:
    # Reference §2 keeps every character but ASCII letters (lower-cased) and spaces (dropped
    # from the local part, trimmed from the end): NUL and newline are not invalid there, so the
    # publisher hashes exactly what the operator would for the same address.
    assert env.pub.login("u1", email, None, OK).status is LoginStatus.SUCCESS
    expected = base64.b64encode(identity_hash("email", email)[1]).decode()
    assert env.op.generate_calls[0][0].hash_b64 == expected


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"floor_price": float("nan")}, "INVALID_FLOOR_PRICE"),
        ({"floor_price": float("inf")}, "INVALID_FLOOR_PRICE"),
        ({"floor_price": -1.0}, "INVALID_FLOOR_PRICE"),
        ({"floor_price": 1e7}, "INVALID_FLOOR_PRICE"),
        ({"placement_id": "p" * 100_000}, "FIELD_TOO_LONG"),
        ({"page_domain": "d" * 257 + ".com"}, "FIELD_TOO_LONG"),
    ],
)
def test_serve_ad_refuses_what_the_ssp_would_before_calling_it(
    env: Env, kw: dict[str, object], reason: str
) -> None:
    args: dict[str, object] = {
        "user_id": None, "cookie_value": None, "placement_id": "p1",
        "page_domain": "news.example.com", "floor_price": 0.5, **kw,
    }  # fmt: skip
    with pytest.raises(ServiceError) as exc:
        env.pub.serve_ad(**args)  # type: ignore[arg-type]  # deliberately wrong or loosely typed fields
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == reason
    assert env.ssp.impressions == []


def test_serve_ad_accepts_the_ssps_largest_floor(env: Env) -> None:
    env.pub.serve_ad(
        user_id=None, cookie_value=None, placement_id="p" * 256, page_domain="d.com",
        floor_price=1e6,
    )  # fmt: skip
    assert env.ssp.impressions[0].floor_price == 1e6


def test_a_step_carries_an_identity_exactly_when_it_keeps_one_in_use() -> None:
    ident = Identity("adv", "ref", 3, 2, 4, "key")
    for kind in (StepKind.USE, StepKind.STALE, StepKind.REFRESHED):
        assert Step(kind, ident).serving is ident
        with pytest.raises(ValueError, match="must carry an identity"):
            Step(kind)
    for kind in (StepKind.OPTOUT, StepKind.LOGIN_REQUIRED):
        assert Step(kind).serving is None
        with pytest.raises(ValueError, match="must carry an identity"):
            Step(kind, ident)


@pytest.mark.parametrize(
    "refused", [PrivacySettings(False, ""), PrivacySettings(False, "TCFSTRING")]
)
def test_consent_refused_at_relogin_ends_the_stored_identity(
    env: Env, refused: PrivacySettings
) -> None:
    assert env.pub.login("u1", "a@b.com", None, OK).status is LoginStatus.SUCCESS
    r = env.pub.login("u1", "a@b.com", None, refused)
    assert r.status is LoginStatus.INSUFFICIENT_CONSENT and not r.clear_cookie
    assert env.store.get("u1") is None  # the background refresher has nothing left to refresh
    assert env.pub.get_advertising_token("u1").status is TokenStatus.NO_IDENTITY
    ad = env.pub.serve_ad(
        user_id="u1", cookie_value=None, placement_id="p", page_domain="d.com", floor_price=0
    )
    assert not ad.token_sent and env.ssp.impressions[-1].advertising_token == ""


def test_client_mode_login_refusals_tell_the_caller_to_clear_the_cookie(client_env: Env) -> None:
    assert not client_env.pub.login("u1", "a@b.com", None, OK).clear_cookie
    r = client_env.pub.login("u1", "a@b.com", None, PrivacySettings(False, ""))
    assert r.status is LoginStatus.INSUFFICIENT_CONSENT and r.clear_cookie and r.cookie is None
    client_env.op.optout_keys.add(f"email:{USER_HASH}")
    r = client_env.pub.login("u1", "user@example.com", None, OK)
    assert r.status is LoginStatus.OPTOUT and r.clear_cookie
    client_env.pub.set_site_optout("u1", True)
    r = client_env.pub.login("u1", "a@b.com", None, OK)
    assert r.status is LoginStatus.SITE_OPTOUT and r.clear_cookie


def _tampered(cookie_value: str, **fields: object) -> str:
    body = json.loads(urllib.parse.unquote(cookie_value))
    body.update(fields)
    return urllib.parse.quote(json.dumps(body))


def test_an_over_long_cookie_token_is_dropped_and_the_ad_still_served(client_env: Env) -> None:
    cookie = client_env.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    bad = _tampered(cookie.value, advertising_token="A4" + "x" * 900)
    with pytest.raises(ServiceError) as exc:
        client_env.pub.refresh_client(bad)
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == "INVALID_COOKIE"
    r = client_env.pub.serve_ad(
        user_id=None, cookie_value=bad, placement_id="p", page_domain="d.com", floor_price=0
    )
    assert not r.token_sent and r.clear_cookie and r.cookie is None
    assert client_env.ssp.impressions[-1].advertising_token == ""


def _ad(
    e: Env, *, user_id: str | None = None, cookie_value: str | None = None
) -> tuple[float, AdResult]:
    started = time.monotonic()
    r = e.pub.serve_ad(
        user_id=user_id, cookie_value=cookie_value, placement_id="p", page_domain="d.com",
        floor_price=0,
    )  # fmt: skip
    return time.monotonic() - started, r


def _stored(e: Env, user_id: str) -> Identity:
    """The identity stored for a user the test logged in (and nothing has ended since)."""
    stored = e.store.get(user_id)
    assert stored is not None, f"no identity stored for {user_id}"
    return stored.identity


def _wait(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_hung_operator_does_not_hold_up_an_impression_with_an_unexpired_token(
    env: Env,
) -> None:
    env.pub.serve_refresh_budget_s = 0.1
    env.pub.login("u1", "a@b.com", None, OK)
    held = env.pub.get_advertising_token("u1").advertising_token
    env.clock.advance(HOUR)  # due for refresh, token valid for 3 days
    env.op.delay_s = 1.0  # the operator hangs
    took, r = _ad(env, user_id="u1")
    assert took < 0.5 and r.token_sent
    assert env.ssp.impressions[-1].advertising_token == held
    # the refresh went on in the background and its result is stored for the next impression
    assert _wait(lambda: _stored(env, "u1").advertising_token != held)
    env.op.delay_s = 0
    _ad(env, user_id="u1")
    assert env.ssp.impressions[-1].advertising_token not in ("", held)


def test_an_impression_does_not_wait_on_a_refresh_in_flight_for_the_same_user(env: Env) -> None:
    env.pub.serve_refresh_budget_s = 0.1
    env.pub.login("u1", "a@b.com", None, OK)
    held = env.pub.get_advertising_token("u1").advertising_token
    env.clock.advance(HOUR)
    with env.pub.user_lock("u1"):  # as the background refresher does around its call
        took, r = _ad(env, user_id="u1")
        assert took < 0.5 and env.ssp.impressions[-1].advertising_token == held
        env.clock.advance(3 * DAY)  # now the token has expired: wait the budget, no longer
        took, r = _ad(env, user_id="u1")
        assert 0.09 < took < 0.5 and not r.token_sent
    assert _wait(lambda: _stored(env, "u1").identity_expires > env.clock.now_ms())
    took, r = _ad(env, user_id="u1")
    assert r.token_sent


def test_an_impression_waits_the_budget_for_an_expired_token_then_goes_without(env: Env) -> None:
    env.pub.serve_refresh_budget_s = 0.1
    env.pub.login("u1", "a@b.com", None, OK)
    env.clock.advance(3 * DAY)
    env.op.delay_s = 1.0
    took, r = _ad(env, user_id="u1")
    assert 0.09 < took < 0.5 and not r.token_sent
    # a second impression meanwhile joins the refresh in flight rather than start another
    _ad(env, user_id="u1")
    assert env.op.peak_in_flight == 1
    env.op.delay_s = 0.0
    assert _wait(lambda: env.op.in_flight == 0 and env.store.get("u1") is not None)
    time.sleep(0.05)
    took, r = _ad(env, user_id="u1")
    assert r.token_sent


def test_a_hung_operator_does_not_hold_up_a_cookie_impression(client_env: Env) -> None:
    client_env.pub.serve_refresh_budget_s = 0.1
    cookie = client_env.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    client_env.clock.advance(HOUR)
    client_env.op.delay_s = 1.0
    took, r = _ad(client_env, cookie_value=cookie.value)
    assert took < 0.5 and r.token_sent and r.cookie is None and not r.clear_cookie
    assert (
        client_env.ssp.impressions[-1].advertising_token
        == decode_cookie(cookie.value).advertising_token
    )


def _ad_as_the_token_expires(e: Env, expires: int, **subject: str) -> AdResult:
    """An impression 50 ms before `expires`, due for refresh, whose refresh hangs while the
    clock passes the expiry."""
    e.pub.serve_refresh_budget_s = 0.2
    e.clock.set(expires - 50)
    e.op.gate = threading.Event()
    passing = threading.Timer(0.05, e.clock.advance, (100,))
    passing.start()
    try:
        return _ad(e, **subject)[1]
    finally:
        e.op.gate.set()
        passing.join()


def test_a_token_that_expires_while_its_impression_waits_is_not_sent(env: Env) -> None:
    """The held token was checked before the wait for a slow operator's refresh; it expired
    during it and went out all the same (the SSP dropped it as expired)."""
    env.pub.login("u1", "late@example.com", None, OK)
    r = _ad_as_the_token_expires(env, _stored(env, "u1").identity_expires, user_id="u1")
    assert not r.token_sent and env.ssp.impressions[-1].advertising_token == ""


def test_a_cookie_token_that_expires_while_its_impression_waits_is_not_sent(
    client_env: Env,
) -> None:
    cookie = client_env.pub.login("u1", "late@example.com", None, OK).cookie
    assert cookie is not None
    expires = decode_cookie(cookie.value).identity_expires
    r = _ad_as_the_token_expires(client_env, expires, cookie_value=cookie.value)
    assert not r.token_sent and client_env.ssp.impressions[-1].advertising_token == ""


def test_an_optout_that_comes_after_its_impression_ends_the_cookies_impressions(
    client_env: Env,
) -> None:
    """The operator answered OPTOUT after the impression's budget: the cookie (which only the
    caller can change) went on carrying the opted-out user's token into every impression."""
    e = client_env
    e.pub.serve_refresh_budget_s = 0.05
    cookie = e.pub.login("u1", "gone@example.com", None, OK).cookie
    assert cookie is not None
    e.op.refresh_optout_keys.add(e.op.generate_calls[-1][0].key)
    e.clock.advance(HOUR)  # due for refresh
    e.op.gate = threading.Event()  # the operator answers late
    _, first = _ad(e, cookie_value=cookie.value)
    assert first.token_sent  # the held token: the answer is not in yet
    e.op.gate.set()
    assert _wait(lambda: not e.pub._pending)  # the refresh ended with OPTOUT, unheard
    asked = len(e.op.refresh_calls)
    e.op.gate = threading.Event()  # were it asked again, it would answer late again
    _, later = _ad(e, cookie_value=cookie.value)
    e.op.gate.set()
    assert not later.token_sent and later.clear_cookie
    assert e.ssp.impressions[-1].advertising_token == ""
    assert len(e.op.refresh_calls) == asked  # known: the operator is not asked again


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        ("INVALID_ARGUMENT", "TOKEN_TOO_LONG", ErrorKind.INVALID_ARGUMENT),
        ("INVALID_ARGUMENT", "INVALID_FLOOR", ErrorKind.INVALID_ARGUMENT),
        ("PERMISSION_DENIED", "INVENTORY_NOT_ALLOWED", ErrorKind.PERMISSION_DENIED),
    ],
)
def test_the_ssp_refusing_the_callers_input_passes_through(
    env: Env, code: str, reason: str, kind: ErrorKind
) -> None:
    env.ssp.refusal = (code, reason)
    with pytest.raises(ServiceError) as exc:
        _ad(env, user_id="u1")
    assert exc.value.kind is kind and exc.value.reason == reason


@pytest.mark.parametrize(
    ("code", "reason"),
    [("UNAUTHENTICATED", "UNKNOWN_API_KEY"), ("PERMISSION_DENIED", "NOT_A_PUBLISHER")],
)
def test_the_ssp_refusing_our_account_is_failed_precondition_with_its_reason(
    env: Env, code: str, reason: str
) -> None:
    env.ssp.refusal = (code, reason)
    with pytest.raises(ServiceError) as exc:
        _ad(env, user_id="u1")
    assert exc.value.kind is ErrorKind.FAILED_PRECONDITION and exc.value.reason == "SSP_REJECTED"
    assert exc.value.metadata == {"peerCode": code, "peerReason": reason}


def test_the_operator_refusing_our_key_carries_its_reason(env: Env) -> None:
    env.op.refuse = True
    with pytest.raises(ServiceError) as exc:
        env.pub.login("u1", "a@b.com", None, OK)
    assert exc.value.reason == "OPERATOR_REJECTED"
    assert exc.value.metadata == {"peerCode": "PERMISSION_DENIED", "peerReason": "ROLE_REQUIRED"}


def test_login_with_a_hash_sends_it_and_shares_the_dii_opt_out_record(env: Env) -> None:
    r = env.pub.login("u1", None, None, OK, email_hash=USER_HASH)
    assert r.status is LoginStatus.SUCCESS
    dii = env.op.generate_calls[-1][0]
    assert dii.kind is DiiKind.EMAIL and dii.hash_b64 == USER_HASH
    hex_phone = base64.b64decode(PHONE_HASH).hex().upper()  # hex is canonicalised to base64
    env.pub.login("u2", None, None, OK, phone_hash=hex_phone)
    dii = env.op.generate_calls[-1][0]
    assert dii.kind is DiiKind.PHONE and dii.hash_b64 == PHONE_HASH
    # an opt-out met through the DII holds for its hash, and the other way round
    env.op.optout_keys.add(f"email:{USER_HASH}")
    assert env.pub.login("u3", "user@example.com", None, OK).status is LoginStatus.OPTOUT
    calls = len(env.op.generate_calls)
    assert env.pub.login("u4", None, None, OK, email_hash=USER_HASH).status is LoginStatus.OPTOUT
    assert len(env.op.generate_calls) == calls


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"email_hash": "not-a-hash"}, "INVALID_EMAIL_HASH"),
        ({"email_hash": USER_HASH[:-2] + "R="}, "INVALID_EMAIL_HASH"),  # non-canonical
        ({"phone_hash": ""}, "INVALID_PHONE_HASH"),
    ],
)
def test_a_bad_hash_is_invalid_argument(env: Env, kw: dict[str, str], reason: str) -> None:
    with pytest.raises(ServiceError) as exc:
        env.pub.login("u1", None, None, OK, **kw)
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == reason
    assert env.op.generate_calls == []


def test_client_refresh_records_an_opt_out_against_a_hash(client_env: Env) -> None:
    cookie = client_env.pub.login("u1", None, None, OK, email_hash=USER_HASH).cookie
    assert cookie is not None
    client_env.op.refresh_optout_keys.add(f"email:{USER_HASH}")
    client_env.clock.advance(HOUR)
    r = client_env.pub.refresh_client(cookie.value, email_hash=USER_HASH)
    assert r.status is TokenStatus.OPTOUT
    assert client_env.pub.login("u1", "user@example.com", None, OK).status is LoginStatus.OPTOUT


def test_serve_ad_for_app_inventory(env: Env) -> None:
    env.pub.login("u1", "a@b.com", None, OK)
    r = env.pub.serve_ad(
        user_id="u1", cookie_value=None, placement_id="p", page_domain="", floor_price=0,
        app_bundle="com.example.news",
    )  # fmt: skip
    assert r.token_sent
    imp = env.ssp.impressions[-1]
    assert imp.app_bundle == "com.example.news" and imp.page_domain == ""


@pytest.mark.parametrize(
    ("page_domain", "app_bundle", "reason"),
    [
        ("", "", "MISSING_PAGE_DOMAIN"),
        ("  ", " ", "MISSING_PAGE_DOMAIN"),  # blank, as the SSP reads it
        ("d.com", "com.example.news", "CONFLICTING_INVENTORY"),
        ("", "b" * 257, "FIELD_TOO_LONG"),
    ],
)
def test_serve_ad_needs_exactly_one_kind_of_inventory(
    env: Env, page_domain: str, app_bundle: str, reason: str
) -> None:
    with pytest.raises(ServiceError) as exc:
        env.pub.serve_ad(
            user_id=None, cookie_value=None, placement_id="p", page_domain=page_domain,
            floor_price=0, app_bundle=app_bundle,
        )  # fmt: skip
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == reason
    assert env.ssp.impressions == []


def test_close_does_not_deadlock_with_an_impression_starting_a_refresh(env: Env) -> None:
    """An impression submits its refresh holding the pending-refresh lock; close() cancels queued
    refreshes, whose callbacks take that lock. close() must not hold the pool's lock while it
    waits for ours (the order once deadlocked: a publisher that never stopped on SIGTERM)."""
    pub = env.pub
    pub._jobs.shutdown()
    pub._jobs = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    blocker, _ = pub._start("busy", lambda: release.wait(5))
    queued, _ = pub._start("queued", lambda: None)  # waits behind the busy one, cancellable
    assert blocker is not None and queued is not None
    submitted = threading.Event()
    with pub._pending_lock:  # as an impression's _start does around submit
        closer = threading.Thread(target=pub.close, daemon=True)
        closer.start()
        time.sleep(0.2)  # let close() get as far as it can

        def submit() -> None:
            pub._jobs.submit(lambda: None)
            submitted.set()

        submitter = threading.Thread(target=submit, daemon=True)
        submitter.start()
        assert submitted.wait(2), "close() holds the pool while waiting for the pending lock"
    release.set()
    closer.join(5)
    assert not closer.is_alive()
    assert pub._start("later", lambda: None) == (None, False)  # closed: nothing new starts


def test_a_failing_refresh_still_sends_the_held_token_and_is_logged_once(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whichever impression started the refresh, an unexpired held token goes out; the refusal
    is logged once, by kind, for whoever watches the logs (nobody may be waiting on it)."""
    env.pub.login("u1", "a@b.com", None, OK)
    held = env.pub.get_advertising_token("u1").advertising_token
    env.clock.advance(HOUR)  # due for refresh, valid for days
    env.op.refuse = True
    configure_logging(service="test")
    capsys.readouterr()
    call_context.begin(request_id="imp-9", method="/p.S/ServeAd")
    try:
        _, r = _ad(env, user_id="u1")
    finally:
        call_context.end()
    assert r.token_sent and env.ssp.impressions[-1].advertising_token == held
    seen: list[str] = []

    def logged() -> bool:
        seen.append(capsys.readouterr().err)
        return "background_job_failed" in "".join(seen)

    assert _wait(logged)
    line = next(x for x in "".join(seen).splitlines() if "background_job_failed" in x)
    assert json.loads(line)["reason"] == "OPERATOR_REJECTED" and "a@b.com" not in line
    assert json.loads(line)["request_id"] == "imp-9"  # the impression's, though its call ended
    assert json.loads(line)["job"] == "user"  # an impression's refresh of a stored user


def test_a_failed_impression_refresh_backs_off_before_the_next_attempt(env: Env) -> None:
    """One refused refresh postpones the next attempt (the stored identity records it); the
    impressions meanwhile send the held token without calling the operator again."""
    env.pub.retry_backoff = Backoff(base_s=10.0, cap_s=60.0, rng=lambda: 0.0)  # 5 s, exactly
    env.pub.login("u1", "a@b.com", None, OK)
    env.clock.advance(HOUR)
    env.op.refuse = True
    _ad(env, user_id="u1")
    stored = env.store.get("u1")
    assert stored is not None and stored.failed_attempts == 1
    assert stored.next_attempt_at == env.clock.now_ms() + 5_000
    calls = len(env.op.refresh_calls)
    env.op.refuse = False
    for _ in range(3):
        _, r = _ad(env, user_id="u1")
        assert r.token_sent  # the held, unexpired token
    assert len(env.op.refresh_calls) == calls
    env.clock.advance(5_001)  # past the backoff: refreshed again, and it works now
    _ad(env, user_id="u1")
    assert _wait(lambda: len(env.op.refresh_calls) == calls + 1)


def test_impressions_of_an_expired_token_back_off_as_those_of_a_held_one_do(env: Env) -> None:
    """Users back after the token's 3 days are the common case: without the back-off each of
    their impressions called a failing operator again (a reviewer counted 60 calls for 20)."""
    env.pub.retry_backoff = Backoff(base_s=10.0, cap_s=60.0, rng=lambda: 0.0)  # 5 s, exactly
    env.pub.login("u1", "a@b.com", None, OK)
    env.clock.advance(3 * DAY)  # the token has expired; its refresh token has not
    env.op.down = True
    _, r = _ad(env, user_id="u1")
    assert not r.token_sent
    assert _wait(lambda: (s := env.store.get("u1")) is not None and s.failed_attempts == 1)
    calls = len(env.op.refresh_calls)
    env.op.down = False
    for _ in range(3):
        _, r = _ad(env, user_id="u1")
        assert not r.token_sent  # no token to send, and the operator is not asked
    assert len(env.op.refresh_calls) == calls
    env.clock.advance(5_001)
    assert _wait(lambda: _ad(env, user_id="u1")[1].token_sent)
    assert len(env.op.refresh_calls) == calls + 1


@pytest.mark.parametrize("expired", [False, True])
def test_impressions_of_a_cookie_whose_refresh_failed_back_off(
    client_env: Env, expired: bool
) -> None:
    """A cookie the publisher cannot write when its refresh fails: the retry time is kept in
    memory instead of in the store."""
    e = client_env
    e.pub.retry_backoff = Backoff(base_s=10.0, cap_s=60.0, rng=lambda: 0.0)  # 5 s, exactly
    cookie = e.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    e.clock.advance(3 * DAY if expired else HOUR)
    e.op.down = True
    _, r = _ad(e, cookie_value=cookie.value)
    assert r.token_sent is not expired and r.cookie is None and not r.clear_cookie
    assert _wait(lambda: len(e.pub.cookie_retries) == 1)
    calls = len(e.op.refresh_calls)
    e.op.down = False
    for _ in range(3):
        _, r = _ad(e, cookie_value=cookie.value)
        assert r.token_sent is not expired and r.cookie is None
    assert len(e.op.refresh_calls) == calls
    e.clock.advance(5_001)
    _, r = _ad(e, cookie_value=cookie.value)
    assert r.token_sent and r.cookie is not None  # refreshed: the caller sets the new cookie
    assert len(e.op.refresh_calls) == calls + 1 and len(e.pub.cookie_retries) == 0


def test_a_cookie_refresh_the_publisher_did_not_ask_for_counts_no_failure(client_env: Env) -> None:
    """OPERATOR_BUSY: the operator was never asked, so there is nothing to back off from."""
    e = client_env
    e.pub._operator_calls = CallBound(
        "operator", 1, busy_reason=OPERATOR_BUSY, slow_s=0.0, monotonic=e.clock
    )
    cookie = e.pub.login("u1", "a@b.com", None, OK).cookie
    assert cookie is not None
    e.clock.advance(HOUR)
    assert e.pub._operator_calls._slots.acquire(
        blocking=False
    )  # every slot taken, as by a slow call
    try:
        e.pub.refresh_client(cookie.value)
        _, r = _ad(e, cookie_value=cookie.value)
        assert r.token_sent
    finally:
        e.pub._operator_calls._slots.release()
    assert len(e.pub.cookie_retries) == 0


def test_an_opt_out_ends_every_stored_identity_of_the_dii(env: Env) -> None:
    """Two users of the site logged in with one email; one refresh learns of its opt-out. The
    other user's identity must not be served on: the opt-out is the DII's."""
    env.pub.login("u1", "user@example.com", None, OK)
    env.pub.login("u2", "USER@example.com", None, OK)  # the same email, normalised
    env.pub.login("u3", "other@example.com", None, OK)
    env.op.refresh_optout_keys.add(f"email:{USER_HASH}")
    env.clock.advance(HOUR)
    assert env.pub.get_advertising_token("u1").status is TokenStatus.OPTOUT
    calls = len(env.op.refresh_calls)
    assert env.pub.get_advertising_token("u2").status is TokenStatus.OPTOUT
    _, r = _ad(env, user_id="u2")
    assert not r.token_sent
    assert len(env.op.refresh_calls) == calls  # known already: not asked again
    assert env.pub.get_advertising_token("u3").status is TokenStatus.SUCCESS


def test_a_cookie_of_a_dii_known_to_have_opted_out_ends_without_a_call(client_env: Env) -> None:
    e = client_env
    first = e.pub.login("u1", "user@example.com", None, OK).cookie
    second = e.pub.login("u2", "user@example.com", None, OK).cookie
    assert first is not None and second is not None
    e.op.refresh_optout_keys.add(f"email:{USER_HASH}")
    e.clock.advance(HOUR)
    assert e.pub.refresh_client(first.value, "user@example.com").status is TokenStatus.OPTOUT
    e.op.refresh_optout_keys.clear()  # the operator would answer OPTOUT; not asked at all
    calls = len(e.op.refresh_calls)
    r = e.pub.refresh_client(second.value, "user@example.com")
    assert r.status is TokenStatus.OPTOUT and r.clear_cookie
    assert len(e.op.refresh_calls) == calls


def test_calls_for_a_user_whose_refresh_hangs_wait_briefly_then_get_the_held_token(
    env: Env,
) -> None:
    """60 GetAdvertisingTokens for one user whose refresh hung on a frozen operator each held a
    server thread in the user's lock (then called the operator again, one by one): a call that
    needed no operator at all waited 11 s for a thread."""
    env.pub.login("hot", "hot@example.com", None, OK)
    held = _stored(env, "hot").advertising_token
    env.clock.advance(HOUR)  # due, unexpired
    env.op.gate = threading.Event()
    pool = ThreadPoolExecutor(9)
    try:
        first = pool.submit(env.pub.get_advertising_token, "hot")
        assert _wait(lambda: env.op.in_flight == 1)
        waiting = [pool.submit(env.pub.get_advertising_token, "hot") for _ in range(8)]
        # Not the frozen call's time, which lasts until the gate opens at the end: a bound on
        # the wait itself (PEER_SLOW_S, 0.5 s) failed at 3 s once in a loaded full run.
        results = [f.result(5) for f in waiting]
        assert {(r.status, r.advertising_token, r.refreshed) for r in results} == {
            (TokenStatus.SUCCESS, held, False)
        }
        assert env.op.peak_in_flight == 1  # the operator asked once, not once per caller
        with callers_deadline(0.05):  # a caller's deadline shortens the wait too
            started = time.monotonic()
            assert env.pub.get_advertising_token("hot").advertising_token == held
            assert time.monotonic() - started < PEER_SLOW_S
        # A login has no held token to fall back on: it waits as long as its caller does.
        with callers_deadline(0.05), pytest.raises(ServiceError) as gave_up:
            env.pub.login("hot", "hot@example.com", None, OK)
        assert (gave_up.value.kind, gave_up.value.reason) == (
            ErrorKind.DEADLINE_EXCEEDED,
            "CALLER_DEADLINE",
        )
        assert env.op.in_flight == 1  # the frozen refresh still holds the user
    finally:
        env.op.gate.set()
        pool.shutdown()
    assert first.result().refreshed


def test_a_call_that_stops_waiting_sees_an_optout_still_being_written(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator answered OPTOUT; its record waited on the store (another process's write
    lock, up to 30 s) while a call that gave up waiting for the user read the store without
    the lock and served the opted-out user's token."""
    env.pub.login("u1", "gone@example.com", None, OK)
    env.op.refresh_optout_keys.add(env.op.generate_calls[-1][0].key)
    env.clock.advance(HOUR)  # due; the held token unexpired
    writing, release = threading.Event(), threading.Event()
    record = env.store.record_operator_optout

    def slow_record(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        release.wait(10)
        return record(*args, **kwargs)

    monkeypatch.setattr(env.store, "record_operator_optout", slow_record)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(env.pub.get_advertising_token, "u1")
        assert writing.wait(5)
        try:
            second = env.pub.get_advertising_token("u1")  # gives up on the lock after 0.5 s
        finally:
            release.set()
        assert (second.status, second.advertising_token) == (TokenStatus.OPTOUT, "")
        assert first.result(5).status is TokenStatus.OPTOUT


def test_an_impression_waiting_for_an_ssp_slot_sends_no_token_opted_out_meanwhile(
    env: Env,
) -> None:
    env.pub.serve_refresh_budget_s = 0.05
    env.pub._ssp_calls = CallBound(
        "ssp", 1, busy_reason="SSP_BUSY", slow_s=5.0, monotonic=env.clock
    )
    env.pub.login("u1", "gone@example.com", None, OK)
    env.op.refresh_optout_keys.add(env.op.generate_calls[-1][0].key)
    env.clock.advance(HOUR)
    env.op.gate = threading.Event()  # the refresh (which will answer OPTOUT) hangs
    slots = env.pub._ssp_calls._slots
    assert slots.acquire(blocking=False)  # every SSP slot taken
    with ThreadPoolExecutor(1) as pool:
        ad = pool.submit(_ad, env, user_id="u1")
        time.sleep(0.2)  # past the budget: the held token chosen, waiting for a slot
        env.op.gate.set()
        assert _wait(lambda: not env.pub._pending)  # OPTOUT answered and recorded
        slots.release()
        _, r = ad.result(5)
    assert not r.token_sent and env.ssp.impressions[-1].advertising_token == ""


def test_past_a_few_waiting_a_users_calls_are_answered_at_once(env: Env) -> None:
    """With no held token to fall back on, a call waits as long as its caller; the 5th at
    once for one user is answered OPERATOR_BUSY rather than hold one more server thread."""
    env.pub.login("hot", "hot@example.com", None, OK)
    env.clock.advance(4 * DAY)  # the token expired; the refresh token still good
    env.op.gate = threading.Event()
    pool = ThreadPoolExecutor(1 + MAX_WAITING_PER_USER)
    try:
        first = pool.submit(env.pub.get_advertising_token, "hot")  # holds the user, frozen
        assert _wait(lambda: env.op.in_flight == 1)
        waiting = [
            pool.submit(env.pub.login, "hot", "hot@example.com", None, OK)
            for _ in range(MAX_WAITING_PER_USER)
        ]
        assert _wait(lambda: len(env.pub._user_locks) == 1)
        time.sleep(PEER_SLOW_S + 0.1)  # the holder is stuck on the operator
        started = time.monotonic()
        with pytest.raises(ServiceError) as busy:
            env.pub.login("hot", "hot@example.com", None, OK)
        assert (busy.value.kind, busy.value.reason) == (ErrorKind.UNAVAILABLE, OPERATOR_BUSY)
        assert time.monotonic() - started < 0.5  # at once
        assert not any(f.done() for f in waiting)  # those four still wait, as before
    finally:
        env.op.gate.set()
        pool.shutdown()
    assert first.result().status is TokenStatus.SUCCESS
    assert all(f.result().status is LoginStatus.SUCCESS for f in waiting)


def test_an_impressions_refresh_carries_the_impressions_request_id(env: Env) -> None:
    # It runs on a thread of its own, past the impression's wait: the id goes with it, so the
    # operator's line for the refresh joins the impression's.
    env.pub.login("u1", "u1@example.com", None, OK)
    env.clock.advance(HOUR)  # due
    call_context.begin(request_id="imp-7", method="/p.S/ServeAd")
    try:
        _ad(env, user_id="u1")
    finally:
        call_context.end()
    assert _wait(lambda: not env.pub._pending)
    assert env.op.refresh_request_ids == ["imp-7"]


def test_a_burst_of_a_users_calls_to_a_healthy_operator_just_queues(env: Env) -> None:
    # The cap on waiters is for a holder stuck on the operator, not for a busy user.
    env.op.delay_s = 0.05
    with ThreadPoolExecutor(8) as pool:
        logins = [pool.submit(env.pub.login, "u", "u@example.com", None, OK) for _ in range(8)]
        assert [f.result(10).status for f in logins] == [LoginStatus.SUCCESS] * 8


@pytest.mark.parametrize(
    ("why", "said"),
    [(TLS_HANDSHAKE_FAILED, "TLS handshake failed"), (CONNECTION_CLOSED, "check --peer-ca")],
)
def test_an_operator_unreachable_for_tls_says_so(env: Env, why: str, said: str) -> None:
    # A wrong --peer-ca, an expired certificate, or none given to call a TLS operator is no
    # outage: the caller and the call's log line hear what to check, while the reason stays
    # the documented OPERATOR_UNAVAILABLE.
    env.op.down, env.op.down_reason = True, why
    failed, fields = _failed_login(env, "u1", "u1@example.com")
    assert (failed.kind, failed.reason) == (
        ErrorKind.UNAVAILABLE,
        "OPERATOR_UNAVAILABLE",
    )
    assert said in failed.message
    assert fields["peer_failure"] == why


def test_a_dii_stays_opted_out_while_any_of_its_opt_out_writes_runs(env: Env) -> None:
    # Two users of one DII, both answered OPTOUT at once: the first write ending must not
    # serve a third user's token while the second still runs.
    for user in ("a", "b", "c"):
        env.pub.login(user, "shared@example.com", None, OK)
    stored = env.store.get("c")
    assert stored is not None
    with env.pub._opting_out(stored.dii_key):
        with env.pub._opting_out(stored.dii_key):
            assert env.pub._read_current("c") == TokenResult(TokenStatus.OPTOUT)
        assert env.pub._read_current("c") == TokenResult(TokenStatus.OPTOUT)  # one still runs
    assert not isinstance(env.pub._read_current("c"), TokenResult)  # none: served again


def test_a_user_waits_on_nobody_elses_operator_call(env: Env) -> None:
    """A frozen operator call holds its own user's lock only: before, 256 striped locks made a
    logout or a current token of another user on the stripe wait for it. "current47" shared
    the stripe of "due" (crc32 & 0xFF)."""
    env.pub.login("due", "due@example.com", None, OK)
    env.pub.login("current47", "current@example.com", None, OK)
    env.clock.advance(HOUR)
    env.pub.login("current47", "current@example.com", None, OK)  # not due for an hour
    env.op.gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    try:
        frozen = pool.submit(env.pub.get_advertising_token, "due")
        assert _wait(lambda: env.op.in_flight == 1)
        started = time.monotonic()
        assert env.pub.get_advertising_token("current47").status is TokenStatus.SUCCESS
        assert env.pub.logout("current47")
        assert time.monotonic() - started < 1.0
    finally:
        env.op.gate.set()
        pool.shutdown()
    assert frozen.result().status is TokenStatus.SUCCESS
    assert len(env.pub._user_locks) == 0  # none kept once nobody holds them


def test_a_login_answered_optout_ends_the_dii_for_its_other_users_while_it_is_written(
    env: Env,
) -> None:
    """Login's opt-out write, like a refresh's, marks the DII while it runs: a call for another
    user of it that does not wait for a lock (an impression's recheck) serves no token."""
    env.pub.login("a", "shared@example.com", None, OK)
    stored = env.store.get("a")
    assert stored is not None
    env.op.optout_keys.add(stored.dii_key)
    writing, release = threading.Event(), threading.Event()
    real_write = env.store.end_as_opted_out

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        assert release.wait(5)
        return real_write(*args, **kwargs)

    env.store.end_as_opted_out = slow_write  # type: ignore[method-assign]  # a store slow to write
    pool = ThreadPoolExecutor(1)
    try:
        login = pool.submit(env.pub.login, "b", "shared@example.com", None, OK)
        assert writing.wait(5)
        assert env.pub._read_current("a") == TokenResult(TokenStatus.OPTOUT)
        release.set()
        assert login.result(5).status is LoginStatus.OPTOUT
    finally:
        release.set()
        pool.shutdown()
    assert env.pub._read_current("a") == TokenResult(TokenStatus.OPTOUT)  # recorded by now
