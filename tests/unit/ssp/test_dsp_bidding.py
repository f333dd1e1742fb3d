from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import pytest

from bidstream.decryptor.checker import TokenChecker, Verdict
from bidstream.decryptor.key_cache import KeyCache
from bidstream.decryptor.optouts import OptOutSet
from dsp_svc.bidding import MAX_IMPS, NBR_INVALID_REQUEST, NBR_UNMATCHED_USER, Bidder
from dsp_svc.config import ConfigError, DspConfig, Mode
from ssp_svc.bid_request import Disposition, Impression, build_bid_request
from svc_common.errors import ServiceError
from tests.unit.ssp.support import DOMAIN, KeySet, fixed_clock, loaded_optouts, mint, raw_uid_b64
from uid2.ssp.v1 import openrtb_pb2


def request(token: str, floor: float = 0.5) -> openrtb_pb2.BidRequest:
    imp = Impression("p", "P", DOMAIN, "", "slot", floor, token)
    return build_bid_request("auc", imp, Disposition.PASSED_THROUGH, 100)


def bidder(**kw: object) -> tuple[Bidder, KeySet, OptOutSet]:
    clock = fixed_clock()
    keys = KeySet(clock)
    cache = KeyCache(keys.body, clock)
    cache.refresh()
    optouts = loaded_optouts()
    b = Bidder(
        "dsp",
        checker=TokenChecker(cache, optouts, clock),
        base_price=1.0,
        identified_bonus=2.0,
        new_id=cast(Callable[[], str], kw.pop("new_id", lambda: "bid")),
        **kw,  # type: ignore[arg-type]  # deliberately wrong or loosely typed fields
    )
    return b, keys, optouts


def price(resp: openrtb_pb2.BidResponse) -> float | None:
    bids = [b for s in resp.seatbid for b in s.bid]
    return bids[0].price if bids else None


def test_bids_higher_for_identified_users_and_never_on_opted_out() -> None:
    b, keys, optouts = bidder()
    assert price(b.bid(request(mint(keys, uid=3)))) == 3.0
    assert price(b.bid(request(""))) == 1.0
    assert price(b.bid(request("garbage-token"))) == 1.0
    optouts.add(raw_uid_b64(3), 1)
    resp = b.bid(request(mint(keys, uid=3)))
    assert price(resp) is None and resp.nbr == NBR_UNMATCHED_USER and resp.id == "auc"


def test_bid_ids_come_from_the_id_source_and_each_bid_says_its_verdict() -> None:
    # The verdicts are counted by the decryptor's checker (/metrics), not here as well.
    ids = iter(["id-1", "id-2"])
    b, keys, _ = bidder(new_id=lambda: next(ids))
    first, identified = b.bid_with_verdict(request(mint(keys, uid=4)))
    second, anonymous = b.bid_with_verdict(request(""))
    assert [r.seatbid[0].bid[0].id for r in (first, second)] == ["id-1", "id-2"]
    assert (identified, anonymous) == (Verdict.VALID, None)


def test_respects_floor() -> None:
    b, _, _ = bidder()
    assert price(b.bid(request("", floor=1.5))) is None


def test_misbehaviour_modes() -> None:
    slept: list[float] = []
    b, _, _ = bidder(mode=Mode.SLOW, delay_ms=250, sleep=slept.append)
    b.bid(request(""))
    assert slept == [0.25]
    failing, _, _ = bidder(mode=Mode.FAIL)
    with pytest.raises(ServiceError):
        failing.bid(request(""))
    flaky, _, _ = bidder(fail_rate=0.5, rng=lambda: 0.4)
    with pytest.raises(ServiceError):
        flaky.bid(request(""))
    garbage, _, _ = bidder(mode=Mode.GARBAGE)
    resp = garbage.bid(request(""))
    assert resp.id != "auc" and math.isnan(resp.seatbid[0].bid[0].price)


def test_a_request_of_many_or_repeated_impressions_is_refused_not_bid_on() -> None:
    # One bid per impression: a small request of a million empty ones made a 92 MB answer.
    b, _, _ = bidder()
    many = request("")
    for i in range(MAX_IMPS):
        many.imp.add(id=f"extra-{i}")
    assert len(many.imp) == MAX_IMPS + 1
    resp = b.bid(many)
    assert resp.nbr == NBR_INVALID_REQUEST and not resp.seatbid
    repeated = request("")
    repeated.imp.add().CopyFrom(repeated.imp[0])
    resp = b.bid(repeated)
    assert resp.nbr == NBR_INVALID_REQUEST and not resp.seatbid
    most = request("")
    for i in range(MAX_IMPS - 1):
        most.imp.add(id=f"extra-{i}")
    assert sum(len(s.bid) for s in b.bid(most).seatbid) == MAX_IMPS


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        DspConfig(name="x", fail_rate=2)
    with pytest.raises(ConfigError, match="at most 1e"):
        DspConfig(name="x", base_price=999_999, identified_bonus=2)  # bids the SSP throws out
    assert DspConfig(name="x", mode=Mode.SLOW).effective_delay_ms == 1000


def test_a_fail_rate_combines_with_the_other_modes() -> None:
    # What lets `--mode slow|garbage` and `--fail-rate` be given together (dsp_svc/cli.py).
    slept: list[float] = []
    slow, _, _ = bidder(mode=Mode.SLOW, delay_ms=250, fail_rate=0.5, rng=lambda: 0.4,
                        sleep=slept.append)  # fmt: skip
    with pytest.raises(ServiceError):
        slow.bid(request(""))
    assert slept == [0.25]
    garbage, _, _ = bidder(mode=Mode.GARBAGE, fail_rate=0.5, rng=lambda: 0.6)
    assert math.isnan(garbage.bid(request("")).seatbid[0].bid[0].price)
