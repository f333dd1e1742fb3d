from __future__ import annotations

import grpc
import grpc_testing

from dsp_svc.bidding import Bidder
from dsp_svc.servicer import BidderServicer
from ssp_svc.bid_request import Disposition, Impression, build_bid_request
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
