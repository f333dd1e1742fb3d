"""PublisherServicer under grpc_testing with fake peers: proto <-> domain conversion."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc_testing
import pytest

from publisher_svc.model import (
    AdDecision,
    AuctionOutcome,
    Impression,
    PrivacySettings,
    StorageMode,
    TokenDisposition,
    WinningBid,
)
from publisher_svc.publisher import Publisher
from publisher_svc.servicer import PublisherServicer
from publisher_svc.store import SqliteStore
from svc_common.clock import ManualClock
from svc_common.errors import ServiceError
from tests.unit.publisher.fakes import HOUR, FakeOperator, FakeSsp
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2 as pb
from uid2.ssp.v1 import ssp_pb2

SERVICE = pb.DESCRIPTOR.services_by_name["PublisherService"]
T0 = 1_700_000_000_000
OK = operator_pb2.PrivacySettings(transparency_notice_accepted=True, tcf_consent_string="CP-tcf")


class NoDeadline:
    """The servicer context of a call without a deadline, for a servicer called directly."""

    def time_remaining(self) -> None:
        return None


class FillingSsp(FakeSsp):
    def submit_impression(self, impression: Impression) -> AdDecision:
        self.impressions.append(impression)
        bid = WinningBid("dsp-a", 1.5, "<ad/>", "cr-1")
        return AdDecision("auc-1", AuctionOutcome.FILLED, TokenDisposition.VALID, 2, bid)


@dataclass
class Harness:
    server: Any
    clock: ManualClock
    op: FakeOperator
    ssp: FakeSsp
    servicer: PublisherServicer
    store: SqliteStore

    def call(self, method: str, request: Any) -> tuple[Any, grpc.StatusCode]:
        rpc = self.server.invoke_unary_unary(SERVICE.methods_by_name[method], (), request, None)
        response, _, code, _ = rpc.termination()
        return response, code


def _harness(tmp_path: Any, mode: StorageMode, ssp: FakeSsp | None = None) -> Harness:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    ssp = ssp or FakeSsp()
    store = SqliteStore(tmp_path)
    pub = Publisher(store=store, operator=op, ssp=ssp, clock=clock, mode=mode)
    servicer = PublisherServicer(pub, site_id=101)
    server = grpc_testing.server_from_dictionary(
        {SERVICE: servicer}, grpc_testing.strict_real_time()
    )
    return Harness(server, clock, op, ssp, servicer, store)


@pytest.fixture
def h(tmp_path: Any) -> Iterator[Harness]:
    harness = _harness(tmp_path, StorageMode.SERVER)
    yield harness
    harness.store.close()


@pytest.fixture
def hc(tmp_path: Any) -> Iterator[Harness]:
    harness = _harness(tmp_path, StorageMode.CLIENT)
    yield harness
    harness.store.close()


def test_login_and_get_token(h: Harness) -> None:
    resp, code = h.call("Login", pb.LoginRequest(user_id="u", email="a@b.com", privacy_settings=OK))
    assert code is grpc.StatusCode.OK
    assert resp.status == pb.LOGIN_STATUS_SUCCESS and resp.refresh_from == T0 + HOUR
    assert not resp.HasField("cookie")
    assert h.op.generate_calls[0][1] == PrivacySettings(True, "CP-tcf")
    tok, _ = h.call("GetAdvertisingToken", pb.GetAdvertisingTokenRequest(user_id="u"))
    assert tok.status == pb.GET_ADVERTISING_TOKEN_STATUS_SUCCESS
    assert tok.advertising_token == "A4tok-1_x-Y" and tok.identity_expires > T0
    h.clock.advance(HOUR)
    tok, _ = h.call("GetAdvertisingToken", pb.GetAdvertisingTokenRequest(user_id="u"))
    assert tok.refreshed and tok.advertising_token == "A4tok-2_x-Y"


def test_statuses(h: Harness) -> None:
    h.op.optout_keys.add("phone:EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4=")
    resp, _ = h.call(
        "Login", pb.LoginRequest(user_id="u", phone="+12345678901", privacy_settings=OK)
    )
    assert resp.status == pb.LOGIN_STATUS_OPTOUT
    resp, _ = h.call("Login", pb.LoginRequest(user_id="v", email="v@b.com"))
    assert resp.status == pb.LOGIN_STATUS_INSUFFICIENT_CONSENT
    resp, _ = h.call("SetUserOptOut", pb.SetUserOptOutRequest(user_id="w", opted_out=True))
    assert resp.opted_out
    resp, _ = h.call("Login", pb.LoginRequest(user_id="w", email="w@b.com", privacy_settings=OK))
    assert resp.status == pb.LOGIN_STATUS_SITE_OPTOUT
    resp, _ = h.call("GetAdvertisingToken", pb.GetAdvertisingTokenRequest(user_id="w"))
    assert resp.status == pb.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY
    h.call("Login", pb.LoginRequest(user_id="x", email="x@b.com", privacy_settings=OK))
    resp, _ = h.call("Logout", pb.LogoutRequest(user_id="x"))
    assert resp.deleted
    resp, _ = h.call("Logout", pb.LogoutRequest(user_id="x"))
    assert not resp.deleted


def test_errors_are_service_errors(h: Harness, hc: Harness) -> None:
    # grpc_testing runs no interceptors: the edge maps these; here we check the domain raises
    with pytest.raises(ServiceError) as exc:
        h.servicer.Login(pb.LoginRequest(user_id="u", email="@b.com"), NoDeadline())
    assert exc.value.reason == "INVALID_EMAIL"
    with pytest.raises(ServiceError) as exc:
        h.servicer.Login(pb.LoginRequest(user_id="u"), NoDeadline())
    assert exc.value.reason == "MISSING_DII"
    with pytest.raises(ServiceError) as exc:
        hc.servicer.RefreshClientIdentity(
            pb.RefreshClientIdentityRequest(cookie_value="x"), NoDeadline()
        )
    assert exc.value.reason == "INVALID_COOKIE"


def test_client_mode_cookie(hc: Harness) -> None:
    resp, _ = hc.call("Login", pb.LoginRequest(user_id="u", email="a@b.com", privacy_settings=OK))
    assert resp.cookie.name == "__uid_2" and resp.cookie.expires > T0
    assert urllib.parse.unquote(resp.cookie.value).startswith('{"advertising_token":"A4tok-1')
    r, _ = hc.call(
        "RefreshClientIdentity", pb.RefreshClientIdentityRequest(cookie_value=resp.cookie.value)
    )
    assert r.status == pb.REFRESH_CLIENT_IDENTITY_STATUS_SUCCESS and not r.clear_cookie
    hc.clock.advance(31 * 24 * HOUR)
    r, _ = hc.call(
        "RefreshClientIdentity", pb.RefreshClientIdentityRequest(cookie_value=resp.cookie.value)
    )
    assert r.status == pb.REFRESH_CLIENT_IDENTITY_STATUS_LOGIN_REQUIRED and r.clear_cookie
    assert not r.HasField("cookie")


def test_serve_ad_maps_the_ssp_decision(tmp_path: Any) -> None:
    h = _harness(tmp_path, StorageMode.SERVER, FillingSsp())
    try:
        h.call("Login", pb.LoginRequest(user_id="u", email="a@b.com", privacy_settings=OK))
        resp, code = h.call(
            "ServeAd",
            pb.ServeAdRequest(user_id="u", placement_id="p", page_domain="d.com", floor_price=0.5),
        )
        assert code is grpc.StatusCode.OK
        assert resp.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
        assert resp.token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID
        assert resp.winning_bid.bidder == "dsp-a" and resp.winning_bid.price == 1.5
        assert resp.bids_received == 2 and resp.token_sent and resp.auction_id == "auc-1"
        imp = h.ssp.impressions[-1]
        assert imp == Impression("d.com", "p", 0.5, "A4tok-1_x-Y")
    finally:
        h.store.close()


def test_consent_refused_at_relogin(h: Harness, hc: Harness) -> None:
    h.call("Login", pb.LoginRequest(user_id="u", email="a@b.com", privacy_settings=OK))
    refused = operator_pb2.PrivacySettings(transparency_notice_accepted=False)
    resp, _ = h.call(
        "Login", pb.LoginRequest(user_id="u", email="a@b.com", privacy_settings=refused)
    )
    assert resp.status == pb.LOGIN_STATUS_INSUFFICIENT_CONSENT and not resp.clear_cookie
    tok, _ = h.call("GetAdvertisingToken", pb.GetAdvertisingTokenRequest(user_id="u"))
    assert tok.status == pb.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY
    resp, _ = hc.call(
        "Login", pb.LoginRequest(user_id="u", email="a@b.com", privacy_settings=refused)
    )
    assert resp.status == pb.LOGIN_STATUS_INSUFFICIENT_CONSENT and resp.clear_cookie
    assert not resp.HasField("cookie")


def test_login_and_client_refresh_by_hash(h: Harness, hc: Harness) -> None:
    email_hash = "tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ="  # user@example.com
    resp, _ = h.call(
        "Login", pb.LoginRequest(user_id="u", email_hash=email_hash, privacy_settings=OK)
    )
    assert resp.status == pb.LOGIN_STATUS_SUCCESS
    assert h.op.generate_calls[-1][0].key == f"email:{email_hash}"
    resp, _ = hc.call(
        "Login", pb.LoginRequest(user_id="u", email_hash=email_hash, privacy_settings=OK)
    )
    hc.op.refresh_optout_keys.add(f"email:{email_hash}")
    hc.clock.advance(HOUR)
    r, _ = hc.call(
        "RefreshClientIdentity",
        pb.RefreshClientIdentityRequest(cookie_value=resp.cookie.value, email_hash=email_hash),
    )
    assert r.status == pb.REFRESH_CLIENT_IDENTITY_STATUS_OPTOUT
    assert hc.store.is_operator_optout(f"email:{email_hash}")
    with pytest.raises(ServiceError) as exc:
        h.servicer.Login(pb.LoginRequest(user_id="u", phone_hash="nope"), NoDeadline())
    assert exc.value.reason == "INVALID_PHONE_HASH"


def test_serve_ad_passes_the_app_bundle(h: Harness) -> None:
    _, code = h.call("ServeAd", pb.ServeAdRequest(placement_id="p", app_bundle="com.a.b"))
    assert code is grpc.StatusCode.OK
    assert h.ssp.impressions[-1] == Impression("", "p", 0.0, "", "com.a.b")
