"""The publisher's client of the SSP's impression API: deadline, retries on UNAVAILABLE, one
typed error (PeerError). The token goes out exactly as received."""

from __future__ import annotations

from publisher_svc.model import AdDecision, Impression, WinningBid
from publisher_svc.peer import PeerClient
from publisher_svc.ssp_enums import disposition_from_proto, outcome_from_proto
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc


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
            outcome=outcome_from_proto(response.outcome),
            token_disposition=disposition_from_proto(response.token_disposition),
            bids_received=response.bids_received,
            winning_bid=bid,
        )
