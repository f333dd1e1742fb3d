"""Thin gRPC edge of the sample DSP."""

from __future__ import annotations

from typing import Any

from dsp_svc.bidding import Bidder
from svc_common import call_context
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc


class BidderServicer(openrtb_pb2_grpc.BidderServiceServicer):
    def __init__(self, bidder: Bidder) -> None:
        self._bidder = bidder

    def Bid(self, request: openrtb_pb2.BidRequest, context: Any) -> openrtb_pb2.BidResponse:
        call_context.bind(auction_id=request.id[:64])
        response = self._bidder.bid(request)
        call_context.bind(bids=sum(len(s.bid) for s in response.seatbid))
        return response
