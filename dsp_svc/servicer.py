"""Thin gRPC edge of the sample DSP."""

from __future__ import annotations

from typing import Any

from dsp_svc.bidding import Bidder
from svc_common import call_context
from svc_common.edge_log import loggable_id
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc


class BidderServicer(openrtb_pb2_grpc.BidderServiceServicer):
    def __init__(self, bidder: Bidder) -> None:
        self._bidder = bidder

    def Bid(self, request: openrtb_pb2.BidRequest, context: Any) -> openrtb_pb2.BidResponse:
        # The SSP's id for the auction: logged only when it is shaped like one (a caller that
        # is not our SSP may send anything there, an email included).
        if loggable_id(request.id):
            call_context.bind(auction_id=request.id)
        response, verdict = self._bidder.bid_with_verdict(request)
        if verdict is not None:
            # The decryptor's verdict, never the token: KEY_NOT_HELD (a key not shared with us)
            # is told from INVALID (forged) here, as on /metrics.
            call_context.bind(token_verdict=verdict.value)
        call_context.bind(bids=sum(len(s.bid) for s in response.seatbid))
        return response
