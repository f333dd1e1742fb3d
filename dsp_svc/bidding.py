"""The sample DSP's bidding logic: decrypts the UID2 token in user.eids with its own keys (the
shared decryptor), bids higher for identified users, never bids on an opted-out user, and can
be told to misbehave for tests (slow, failing, garbage)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from bidstream.decryptor.checker import TokenChecker, Verdict
from bidstream.eids import uid2_token
from dsp_svc.config import Mode
from svc_common.errors import unavailable
from uid2.ssp.v1 import openrtb_pb2

NBR_UNKNOWN = 0
NBR_INVALID_REQUEST = 2
NBR_UNMATCHED_USER = 8
# Impressions one request may carry (the SSP sends one); their ids must differ, as OpenRTB asks.
MAX_IMPS = 100


class Bidder:
    def __init__(
        self,
        name: str,
        *,
        checker: TokenChecker | None,
        base_price: float,
        identified_bonus: float,
        mode: Mode = Mode.NORMAL,
        delay_ms: int = 0,
        fail_rate: float = 0.0,
        new_id: Callable[[], str],
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._checker = checker
        self._base = base_price
        self._bonus = identified_bonus
        self._mode = mode
        self._delay_s = delay_ms / 1000
        self._fail_rate = fail_rate
        self._rng = rng
        self._sleep = sleep
        # Bid ids: the caller's source, so a test can predict them.
        self._new_id = new_id

    def verdict(self, request: openrtb_pb2.BidRequest) -> Verdict | None:
        """The token's verdict; None without a token or without keys to check it."""
        token = uid2_token(request)
        if token is None or self._checker is None:
            return None
        app = request.HasField("app")
        channel = request.app.bundle if app else request.site.domain
        return self._checker.check(token, channel or None, app=app)

    def bid(self, request: openrtb_pb2.BidRequest) -> openrtb_pb2.BidResponse:
        return self.bid_with_verdict(request)[0]

    def bid_with_verdict(
        self, request: openrtb_pb2.BidRequest
    ) -> tuple[openrtb_pb2.BidResponse, Verdict | None]:
        """The answer, and the token's verdict (None: no token, no keys to check it, or the
        request not looked at: told to fail or answer garbage, or malformed)."""
        if self._delay_s:
            self._sleep(self._delay_s)
        if self._mode is Mode.FAIL or (self._fail_rate and self._rng() < self._fail_rate):
            raise unavailable("BIDDER_FAILING", "the bidder was told to fail")
        if self._mode is Mode.GARBAGE:
            return openrtb_pb2.BidResponse(
                id="not-" + request.id,
                seatbid=[
                    openrtb_pb2.SeatBid(
                        seat=self.name, bid=[openrtb_pb2.Bid(id="x", impid="?", price=math.nan)]
                    )
                ],
            ), None
        if not 0 < len(request.imp) <= MAX_IMPS or len({i.id for i in request.imp}) != len(
            request.imp
        ):
            # One bid per impression: 1M empty ones in a 2 MB request made a 92 MB answer.
            return openrtb_pb2.BidResponse(id=request.id, nbr=NBR_INVALID_REQUEST), None
        verdict = self.verdict(request)
        if verdict is Verdict.OPTED_OUT:
            return openrtb_pb2.BidResponse(id=request.id, nbr=NBR_UNMATCHED_USER), verdict
        identified = verdict is Verdict.VALID
        price = self._base + (self._bonus if identified else 0.0)
        bids = [
            openrtb_pb2.Bid(
                id=self._new_id(),
                impid=imp.id,
                price=price,
                adm=f"<div class='ad'>{self.name}</div>",
                crid=f"{self.name}-{'identified' if identified else 'contextual'}",
            )
            for imp in request.imp
            if price > 0 and price >= imp.bidfloor
        ]
        if not bids:
            return openrtb_pb2.BidResponse(id=request.id, nbr=NBR_UNKNOWN), verdict
        return openrtb_pb2.BidResponse(
            id=request.id, cur="USD", seatbid=[openrtb_pb2.SeatBid(seat=self.name, bid=bids)]
        ), verdict
