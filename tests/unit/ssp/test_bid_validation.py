"""Which bids the SSP takes from a bidder's answer (ssp_svc.bidders.best_valid_bid)."""

from __future__ import annotations

import math

import pytest

from ssp_svc.bidders import GarbageResponse, best_valid_bid
from svc_common.impression_limits import MAX_FLOOR_PRICE
from uid2.ssp.v1 import openrtb_pb2 as rtb

REQUEST = rtb.BidRequest(id="a1", imp=[rtb.Imp(id="1")])


def _answer(*prices: float) -> rtb.BidResponse:
    bids = [rtb.Bid(id=f"b{i}", impid="1", price=p) for i, p in enumerate(prices)]
    return rtb.BidResponse(id="a1", seatbid=[rtb.SeatBid(bid=bids)])


def test_the_highest_bid_wins_and_zero_is_no_bid() -> None:
    best = best_valid_bid("d", REQUEST, _answer(0.0, 2.5, 1.0, MAX_FLOOR_PRICE))
    assert best is not None and best.price == MAX_FLOOR_PRICE
    assert best_valid_bid("d", REQUEST, _answer(0.0)) is None


@pytest.mark.parametrize("price", [-0.01, math.nan, math.inf, MAX_FLOOR_PRICE * 1.01, 1e308])
def test_a_price_no_floor_could_call_for_makes_the_answer_garbage(price: float) -> None:
    # 1e308 won every auction, and the publisher was told it as the price.
    with pytest.raises(GarbageResponse):
        best_valid_bid("d", REQUEST, _answer(2.5, price))
