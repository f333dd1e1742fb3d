"""The SSP's SubmitImpression line and the DSP's Bid line carry the decryptor's verdict on the
token (`token_verdict`), never the token: a token naming a key the reader is not given shows as
KEY_NOT_HELD there, though the SSP answers DROPPED_INVALID for it as for a forged one. Real
keys and tokens; the servicers are called as the edge calls them, inside a call's context."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bidstream.decryptor.checker import TokenChecker
from bidstream.decryptor.key_cache import KeyCache
from dsp_svc.bidding import Bidder
from dsp_svc.servicer import BidderServicer
from ssp_svc.bid_request import Disposition, Impression, build_bid_request
from ssp_svc.bidders import FanOutResult
from ssp_svc.exchange import Exchange
from ssp_svc.servicer import SspServicer
from ssp_svc.store.accounts import AccountKind, SqliteAccountStore
from ssp_svc.stream_hub import StreamHub
from svc_common import call_context
from svc_common.clock import SystemClock
from tests.unit.ssp.support import DOMAIN, KeySet, fixed_clock, loaded_optouts, make_key, mint
from uid2.ssp.v1 import openrtb_pb2, ssp_pb2


class _Context:
    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None


def _checker(keys: KeySet) -> TokenChecker:
    cache = KeyCache(keys.body, keys.clock)
    assert cache.refresh()
    return TokenChecker(cache, loaded_optouts(), keys.clock, early_refresh_wait_s=0.0)


def _tokens(keys: KeySet) -> dict[str, str]:
    """By the verdict each should get (NONE: no token)."""
    # Site 43 does not share with us: its site key is not in our key set.
    return {
        "VALID": mint(keys),
        "KEY_NOT_HELD": mint(keys, site_key=make_key(150, 11, 43, now=keys.now_s())),
        "INVALID": "A4" + "Q" * 216,
        "NONE": "",
    }


def _in_a_call(call: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """What `call` answered, and the fields its call's line gets."""
    call_context.begin(request_id="r")
    try:
        answer = call()
    finally:
        fields = call_context.end()
    return answer, fields


def test_the_ssps_call_line_carries_the_verdict_not_the_token(tmp_path: Path) -> None:
    keys = KeySet(fixed_clock())
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=SystemClock())
    hub: StreamHub[openrtb_pb2.BidRequest] = StreamHub(capacity=8)
    try:
        _, pub_key = store.add("pub", AccountKind.PUBLISHER, (DOMAIN,))
        exchange = Exchange(
            checker=_checker(keys),
            fan_out=lambda req, tmax_ms: FanOutResult(),
            hub=hub,
            clock=keys.clock,
            tmax_ms=100,
        )
        servicer = SspServicer(exchange, store, hub)
        for expected, token in _tokens(keys).items():
            request = ssp_pb2.SubmitImpressionRequest(
                page_domain=DOMAIN, placement_id="top", floor_price=1.0, advertising_token=token
            )
            answer, fields = _in_a_call(
                functools.partial(servicer.SubmitImpression, request, _Context(pub_key))
            )
            assert fields.get("token_verdict", "NONE") == expected, fields
            if expected in ("KEY_NOT_HELD", "INVALID"):  # the wire is unchanged
                assert fields["token_disposition"] == "DROPPED_INVALID"
                assert answer.token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_INVALID
            if token:
                assert token not in repr(fields)
    finally:
        hub.close()
        store.close()


def test_the_dsps_call_line_carries_the_verdict_not_the_token() -> None:
    keys = KeySet(fixed_clock())
    bidder = Bidder(
        "dsp", checker=_checker(keys), base_price=1.0, identified_bonus=1.0, new_id=lambda: "b"
    )
    for expected, token in _tokens(keys).items():
        imp = Impression("p", "P", DOMAIN, "", "slot", 0.5, token)
        request = build_bid_request("auc-1", imp, Disposition.PASSED_THROUGH, 100)
        _, fields = _in_a_call(functools.partial(BidderServicer(bidder).Bid, request, None))
        assert fields.get("token_verdict", "NONE") == expected, fields
        assert fields["bids"] == 1
        if token:
            assert token not in repr(fields)
