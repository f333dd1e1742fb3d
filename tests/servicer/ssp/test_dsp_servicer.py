from __future__ import annotations

import hashlib

import grpc
import grpc_testing
import pytest

from dsp_svc.bidding import Bidder
from dsp_svc.servicer import BidderServicer
from ssp_svc.bid_request import Disposition, Impression, build_bid_request
from svc_common import call_context
from uid2.ssp.v1 import openrtb_pb2

SERVICE = openrtb_pb2.DESCRIPTOR.services_by_name["BidderService"]
BID = SERVICE.methods_by_name["Bid"]


def test_bid_without_keys_bids_base_price() -> None:
    bidder = Bidder(
        "dsp", checker=None, base_price=1.25, identified_bonus=1.0, new_id=lambda: "bid-1"
    )
    server = grpc_testing.server_from_dictionary(
        {SERVICE: BidderServicer(bidder)}, grpc_testing.strict_real_time()
    )
    imp = Impression("p", "P", "example.com", "", "slot", 1.0, "some-token")
    request = build_bid_request("auc-9", imp, Disposition.PASSED_THROUGH, 100)
    response, _, code, _ = server.invoke_unary_unary(BID, (), request, None).termination()
    assert code == grpc.StatusCode.OK
    assert response.id == "auc-9"
    bid = response.seatbid[0].bid[0]
    assert response.seatbid[0].seat == "dsp"
    assert bid.impid == "1" and bid.price == 1.25 and bid.crid == "dsp-contextual"
    assert bid.id == "bid-1"


@pytest.mark.parametrize(
    ("auction_id", "logged"),
    [
        ("4bf92f3577b34da6a3ce929d0e0e4736", True),  # the SSP's: 16 random bytes in hex
        ("auc-9", True),
        ("privacy.marker@example.com", False),  # a caller that is not our SSP sends anything
        ("+12065557781", False),
        (hashlib.sha256(b"x@example.com").hexdigest(), False),
    ],
)
def test_the_auction_id_is_logged_only_when_shaped_like_one(auction_id: str, logged: bool) -> None:
    bidder = Bidder("dsp", checker=None, base_price=1.0, identified_bonus=1.0, new_id=lambda: "b")
    imp = Impression("p", "P", "example.com", "", "slot", 1.0, "some-token")
    request = build_bid_request(auction_id, imp, Disposition.PASSED_THROUGH, 100)
    call_context.begin(request_id="r")
    try:
        BidderServicer(bidder).Bid(request, None)
    finally:
        fields = call_context.end()
    assert fields.get("auction_id") == (auction_id if logged else None)
    assert fields["bids"] == 1
