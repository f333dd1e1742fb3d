"""PublisherService: proto in -> Publisher call -> proto out."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from publisher_svc.caller_deadline import callers_deadline
from publisher_svc.model import PrivacySettings
from publisher_svc.publisher import Publisher
from publisher_svc.results import Cookie, LoginStatus, TokenStatus
from publisher_svc.ssp_enums import disposition_to_proto, outcome_to_proto
from svc_common import call_context
from uid2.publisher.v1 import publisher_pb2, publisher_pb2_grpc
from uid2.ssp.v1 import ssp_pb2

_LOGIN = {
    LoginStatus.SUCCESS: publisher_pb2.LOGIN_STATUS_SUCCESS,
    LoginStatus.OPTOUT: publisher_pb2.LOGIN_STATUS_OPTOUT,
    LoginStatus.SITE_OPTOUT: publisher_pb2.LOGIN_STATUS_SITE_OPTOUT,
    LoginStatus.INSUFFICIENT_CONSENT: publisher_pb2.LOGIN_STATUS_INSUFFICIENT_CONSENT,
}
_TOKEN = {
    TokenStatus.SUCCESS: publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_SUCCESS,
    TokenStatus.NO_IDENTITY: publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY,
    TokenStatus.OPTOUT: publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_OPTOUT,
    TokenStatus.LOGIN_REQUIRED: publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_LOGIN_REQUIRED,
}
_CLIENT = {
    TokenStatus.SUCCESS: publisher_pb2.REFRESH_CLIENT_IDENTITY_STATUS_SUCCESS,
    TokenStatus.OPTOUT: publisher_pb2.REFRESH_CLIENT_IDENTITY_STATUS_OPTOUT,
    TokenStatus.LOGIN_REQUIRED: publisher_pb2.REFRESH_CLIENT_IDENTITY_STATUS_LOGIN_REQUIRED,
}


def _cookie(c: Cookie | None) -> publisher_pb2.ClientCookie | None:
    if c is None:
        return None
    return publisher_pb2.ClientCookie(name=c.name, value=c.value, expires=c.expires)


class _Dii(NamedTuple):
    email: str | None
    phone: str | None
    email_hash: str | None
    phone_hash: str | None


def _dii(request: Any) -> _Dii:
    which = request.WhichOneof("dii")
    return _Dii(*(getattr(request, f) if f == which else None for f in _Dii._fields))


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[["PublisherServicer", Req, Any], Resp]


def _served(method: Method[Req, Resp]) -> Method[Req, Resp]:
    """Binds the call's site to its log line, and its caller's deadline to the peer calls it
    makes (caller_deadline.callers_deadline): a caller that gave up holds no thread after it."""

    @functools.wraps(method)
    def serve(self: PublisherServicer, request: Req, context: Any) -> Resp:
        call_context.bind(site_id=self._site_id)
        with callers_deadline(context.time_remaining()):
            return method(self, request, context)

    return serve


class PublisherServicer(publisher_pb2_grpc.PublisherServiceServicer):
    def __init__(self, publisher: Publisher, site_id: int) -> None:
        self._pub = publisher
        self._site_id = site_id

    @_served
    def Login(
        self, request: publisher_pb2.LoginRequest, context: Any
    ) -> publisher_pb2.LoginResponse:
        dii = _dii(request)
        ps = request.privacy_settings
        result = self._pub.login(
            request.user_id,
            dii.email,
            dii.phone,
            PrivacySettings(ps.transparency_notice_accepted, ps.tcf_consent_string),
            email_hash=dii.email_hash,
            phone_hash=dii.phone_hash,
        )
        call_context.bind(outcome=result.status.value)
        return publisher_pb2.LoginResponse(
            status=_LOGIN[result.status],
            cookie=_cookie(result.cookie),
            refresh_from=result.refresh_from,
            clear_cookie=result.clear_cookie,
        )

    @_served
    def GetAdvertisingToken(
        self, request: publisher_pb2.GetAdvertisingTokenRequest, context: Any
    ) -> publisher_pb2.GetAdvertisingTokenResponse:
        result = self._pub.get_advertising_token(request.user_id)
        call_context.bind(outcome=result.status.value)
        return publisher_pb2.GetAdvertisingTokenResponse(
            status=_TOKEN[result.status],
            advertising_token=result.advertising_token,
            identity_expires=result.identity_expires,
            refreshed=result.refreshed,
        )

    @_served
    def RefreshClientIdentity(
        self, request: publisher_pb2.RefreshClientIdentityRequest, context: Any
    ) -> publisher_pb2.RefreshClientIdentityResponse:
        dii = _dii(request)
        result = self._pub.refresh_client(
            request.cookie_value,
            dii.email,
            dii.phone,
            email_hash=dii.email_hash,
            phone_hash=dii.phone_hash,
        )
        call_context.bind(outcome=result.status.value)
        return publisher_pb2.RefreshClientIdentityResponse(
            status=_CLIENT[result.status],
            cookie=_cookie(result.cookie),
            refreshed=result.refreshed,
            clear_cookie=result.clear_cookie,
            advertising_token=result.advertising_token,
        )

    @_served
    def Logout(
        self, request: publisher_pb2.LogoutRequest, context: Any
    ) -> publisher_pb2.LogoutResponse:
        return publisher_pb2.LogoutResponse(deleted=self._pub.logout(request.user_id))

    @_served
    def ServeAd(
        self, request: publisher_pb2.ServeAdRequest, context: Any
    ) -> publisher_pb2.ServeAdResponse:
        which = request.WhichOneof("subject")
        result = self._pub.serve_ad(
            user_id=request.user_id if which == "user_id" else None,
            cookie_value=request.cookie_value if which == "cookie_value" else None,
            placement_id=request.placement_id,
            page_domain=request.page_domain,
            floor_price=request.floor_price,
            app_bundle=request.app_bundle,
        )
        d = result.decision
        # The SSP's auction id: the SSP's and the bidders' lines of the same impression carry it.
        call_context.bind(
            token_sent=result.token_sent, outcome=d.outcome.name, auction_id=d.auction_id
        )
        bid = None
        if d.winning_bid is not None:
            w = d.winning_bid
            bid = ssp_pb2.WinningBid(
                bidder=w.bidder, price=w.price, ad_markup=w.ad_markup, creative_id=w.creative_id
            )
        return publisher_pb2.ServeAdResponse(
            auction_id=d.auction_id,
            outcome=outcome_to_proto(d.outcome),
            winning_bid=bid,
            token_disposition=disposition_to_proto(d.token_disposition),
            bids_received=d.bids_received,
            token_sent=result.token_sent,
            cookie=_cookie(result.cookie),
            clear_cookie=result.clear_cookie,
        )

    @_served
    def SetUserOptOut(
        self, request: publisher_pb2.SetUserOptOutRequest, context: Any
    ) -> publisher_pb2.SetUserOptOutResponse:
        opted = self._pub.set_site_optout(request.user_id, request.opted_out)
        return publisher_pb2.SetUserOptOutResponse(opted_out=opted)
