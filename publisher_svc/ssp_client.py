"""The publisher's client of the SSP's impression API: deadline, retries on UNAVAILABLE, one
typed error (PeerError). The token goes out exactly as received."""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor

from publisher_svc.model import AdDecision, Impression, WinningBid
from publisher_svc.peer import PeerClient
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc

_OUTCOMES = ssp_pb2.AuctionOutcome.DESCRIPTOR
_DISPOSITIONS = ssp_pb2.TokenDisposition.DESCRIPTOR


def _name(enum: EnumDescriptor, value: int, prefix: str) -> str:
    """An SSP enum value's name without its prefix; "UNSPECIFIED" for values newer than us."""
    known = enum.values_by_number.get(value)
    if known is None:
        return "UNSPECIFIED"
    full = known.name
    return full[len(prefix) :] if full.startswith(prefix) else full


class SspClient(PeerClient):
    peer = "ssp"
    stub_class = ssp_pb2_grpc.SspServiceStub
    default_attempts = 2

    def submit_impression(self, impression: Impression) -> AdDecision:
        # `inventory` is a oneof: set only the one given (setting "" would still select it).
        inventory = (
            {"app_bundle": impression.app_bundle}
            if impression.app_bundle
            else {"page_domain": impression.page_domain}
        )
        request = ssp_pb2.SubmitImpressionRequest(
            **inventory,
            placement_id=impression.placement_id,
            floor_price=impression.floor_price,
            advertising_token=impression.advertising_token,
        )
        response = self._call(self._stub.SubmitImpression, request)
        bid = None
        if response.HasField("winning_bid"):
            w = response.winning_bid
            bid = WinningBid(w.bidder, w.price, w.ad_markup, w.creative_id)
        return AdDecision(
            auction_id=response.auction_id,
            outcome=_name(_OUTCOMES, response.outcome, "AUCTION_OUTCOME_"),
            token_disposition=_name(
                _DISPOSITIONS, response.token_disposition, "TOKEN_DISPOSITION_"
            ),
            bids_received=response.bids_received,
            winning_bid=bid,
        )
