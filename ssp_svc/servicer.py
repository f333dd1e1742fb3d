"""Thin gRPC edge of the SSP: proto in -> Exchange -> proto out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ssp_svc.bid_request import Disposition
from ssp_svc.exchange import Exchange
from ssp_svc.store.accounts import Account, AccountKind, AccountStore
from ssp_svc.stream_filter import stream_filter
from ssp_svc.stream_hub import StreamHub
from ssp_svc.stream_reaper import StreamReaper
from svc_common import call_context
from svc_common.errors import permission_denied, unauthenticated, unavailable
from svc_common.grpc_edge import bearer_token
from uid2.ssp.v1 import openrtb_pb2, ssp_pb2, ssp_pb2_grpc

# By name, built at import (as publisher_svc.ssp_enums does the other way): a domain member
# the proto lacks fails there, not in the middle of an auction.
_DISPOSITIONS = {
    d: ssp_pb2.TokenDisposition.ValueType(
        ssp_pb2.TokenDisposition.Value(f"TOKEN_DISPOSITION_{d.name}")
    )
    for d in Disposition
}

POLL_S = 0.25
# How often an open bid stream checks its key again: a key disabled since the stream opened
# (`uid2-ssp subscriber disable`) ends it, UNAUTHENTICATED, within about this long.
RECHECK_KEY_S = 1.0


def authenticate(accounts: AccountStore, context: Any) -> Account:
    api_key = bearer_token(context)
    if api_key is None:
        raise unauthenticated("MISSING_API_KEY", "authorization: Bearer <api key> is required")
    account = accounts.authenticate(api_key)
    if account is None:
        raise unauthenticated("UNKNOWN_API_KEY", "the API key is not known")
    return account


class SspServicer(ssp_pb2_grpc.SspServiceServicer):
    def __init__(
        self,
        exchange: Exchange,
        accounts: AccountStore,
        hub: StreamHub[openrtb_pb2.BidRequest],
    ) -> None:
        self._exchange = exchange
        self._accounts = accounts
        self._hub = hub
        self._reaper = StreamReaper(
            lambda key: accounts.authenticate(key) is not None, RECHECK_KEY_S
        )

    def SubmitImpression(
        self, request: ssp_pb2.SubmitImpressionRequest, context: Any
    ) -> ssp_pb2.SubmitImpressionResponse:
        account = authenticate(self._accounts, context)
        if account.kind is not AccountKind.PUBLISHER:
            raise permission_denied("NOT_A_PUBLISHER", "the API key is not a publisher's")
        call_context.bind(publisher=account.name)
        imp = self._exchange.validate(
            account,
            page_domain=request.page_domain,
            app_bundle=request.app_bundle,
            placement_id=request.placement_id,
            floor_price=request.floor_price,
            token=request.advertising_token,
        )

        def time_left_ms() -> int:
            remaining_s = context.time_remaining()
            # No deadline: grpc reports some 9e18 s (a context without one may say None).
            return int(min(1e6 if remaining_s is None else remaining_s, 1e6) * 1000)

        report = self._exchange.run(imp, callers_time_left_ms=time_left_ms)
        call_context.bind(
            auction_id=report.auction_id,
            token_disposition=report.disposition.value,
            bids=report.bids_received,
            filled=report.winner is not None,
        )
        if report.verdict is not None:
            # Finer than the disposition the caller is answered: KEY_NOT_HELD (a key not shared
            # with us, or not fetched yet) and INVALID (forged) are both DROPPED_INVALID.
            call_context.bind(token_verdict=report.verdict.value)
        response = ssp_pb2.SubmitImpressionResponse(
            auction_id=report.auction_id,
            outcome=ssp_pb2.AUCTION_OUTCOME_NO_FILL,
            token_disposition=_DISPOSITIONS[report.disposition],
            bids_received=report.bids_received,
        )
        if report.winner is not None:
            response.outcome = ssp_pb2.AUCTION_OUTCOME_FILLED
            response.winning_bid.CopyFrom(
                ssp_pb2.WinningBid(
                    bidder=report.winner.bidder,
                    price=report.winner.price,
                    ad_markup=report.winner.ad_markup,
                    creative_id=report.winner.creative_id,
                )
            )
        return response

    def StreamBidRequests(
        self, request: ssp_pb2.StreamBidRequestsRequest, context: Any
    ) -> Iterator[ssp_pb2.StreamBidRequestsResponse]:
        account = authenticate(self._accounts, context)
        call_context.bind(subscriber=account.name)
        accept = stream_filter(account, request.site_domain, request.app_bundle)
        sub = self._hub.subscribe(
            accept,
            owner=f"{account.kind.value}:{account.account_id}",
            limited=account.kind is AccountKind.PUBLISHER,
        )
        context.add_callback(sub.close)
        # Ends the call should the reader stop reading: this loop then never gets back to its
        # key check, or has ended while its last message waits to be sent.
        self._reaper.watch(bearer_token(context) or "", context)
        recheck_at = time.monotonic() + RECHECK_KEY_S
        with sub:
            while context.is_active():
                if time.monotonic() >= recheck_at:
                    authenticate(self._accounts, context)  # raises once the key is disabled
                    recheck_at = time.monotonic() + RECHECK_KEY_S
                delivery = sub.get(POLL_S)
                if delivery is None:
                    if sub.closed:
                        if self._hub.closed:
                            # Not OK, which says the stream is over: readers reconnect on
                            # UNAVAILABLE, as to an operator's WatchOptOuts that stops.
                            raise unavailable(
                                "SERVER_STOPPING", "the SSP is stopping: connect again"
                            )
                        return
                    continue
                yield ssp_pb2.StreamBidRequestsResponse(
                    bid_request=delivery.item,
                    sent_at=delivery.sent_at_ms,
                    dropped_since_last=delivery.dropped_since_last,
                    dropped_total=delivery.dropped_total,
                )
