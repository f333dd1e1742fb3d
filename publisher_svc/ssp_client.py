"""The publisher's client of the SSP's impression API: deadline, retries on UNAVAILABLE, one
typed error (PeerError). The token goes out exactly as received."""

from __future__ import annotations

import grpc

from publisher_svc.model import AdDecision, Impression, WinningBid
from publisher_svc.operator_client import CHANNEL_OPTIONS, peer_error
from svc_common.grpc_client import Backoff, RemoteError, bearer, call_with_retry
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc


def _name(enum: object, value: int, prefix: str) -> str:
    """An SSP enum value's name without its prefix; "UNSPECIFIED" for values newer than us."""
    try:
        full: str = enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return "UNSPECIFIED"
    return full[len(prefix) :] if full.startswith(prefix) else full


class SspClient:
    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        timeout_s: float = 2.0,
        attempts: int = 2,
        backoff: Backoff | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = ssp_pb2_grpc.SspServiceStub(self._channel)
        self._metadata = bearer(api_key)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff = backoff or Backoff(base_s=0.05, cap_s=0.5)

    def close(self) -> None:
        self._channel.close()

    def submit_impression(self, impression: Impression) -> AdDecision:
        request = ssp_pb2.SubmitImpressionRequest(
            page_domain=impression.page_domain,
            placement_id=impression.placement_id,
            floor_price=impression.floor_price,
            advertising_token=impression.advertising_token,
        )
        try:
            response = call_with_retry(
                self._stub.SubmitImpression,
                request,
                timeout_s=self._timeout_s,
                metadata=self._metadata,
                attempts=self._attempts,
                backoff=self._backoff,
            )
        except RemoteError as err:
            raise peer_error("ssp", err) from None
        bid = None
        if response.HasField("winning_bid"):
            w = response.winning_bid
            bid = WinningBid(w.bidder, w.price, w.ad_markup, w.creative_id)
        return AdDecision(
            auction_id=response.auction_id,
            outcome=_name(ssp_pb2.AuctionOutcome, response.outcome, "AUCTION_OUTCOME_"),
            token_disposition=_name(
                ssp_pb2.TokenDisposition, response.token_disposition, "TOKEN_DISPOSITION_"
            ),
            bids_received=response.bids_received,
            winning_bid=bid,
        )
