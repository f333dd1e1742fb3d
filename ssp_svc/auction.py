"""The auction: first price above the floor. Pure: bids in, winner out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One bidder's valid bid for the auction's impression."""

    bidder: str
    price: float
    bid_id: str = ""
    ad_markup: str = ""
    creative_id: str = ""


def run_auction(bids: Sequence[Candidate], floor: float) -> Candidate | None:
    """The highest bid at or above `floor`, paying its own price (first price), or None.

    Ties go to the earliest bid in `bids` (the caller passes bidders in configured order), so
    the outcome is deterministic. Non-finite or non-positive prices never win."""
    winner: Candidate | None = None
    for bid in bids:
        if not math.isfinite(bid.price) or bid.price <= 0 or bid.price < floor:
            continue
        if winner is None or bid.price > winner.price:
            winner = bid
    return winner
