from __future__ import annotations

import functools

import pytest

from bidstream.decryptor.checker import TokenChecker, Verdict
from bidstream.decryptor.key_cache import KeyCache
from bidstream.eids import uid2_token
from ssp_svc.auction import Candidate
from ssp_svc.bid_request import Disposition
from ssp_svc.bidders import FanOutResult
from ssp_svc.exchange import _BY_VERDICT, AuctionReport, Exchange
from ssp_svc.store.accounts import Account, AccountKind
from ssp_svc.stream_hub import StreamHub
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.ssp.support import (
    DOMAIN,
    KeySet,
    fixed_clock,
    loaded_optouts,
    make_key,
    mint,
    raw_uid_b64,
)
from uid2.ssp.v1 import openrtb_pb2

PUB = Account("p1", "Pub", AccountKind.PUBLISHER, ("example.com",))


class Bidders:
    def __init__(self, *prices: float) -> None:
        self.prices = prices
        self.seen: list[openrtb_pb2.BidRequest] = []

    def __call__(self, req: openrtb_pb2.BidRequest, tmax_ms: int) -> FanOutResult:
        self.seen.append(req)
        self.tmax_ms = tmax_ms
        return FanOutResult([Candidate(f"b{i}", p) for i, p in enumerate(self.prices)])


def exchange(
    bidders: Bidders, checker: TokenChecker | None = None
) -> tuple[Exchange, StreamHub[openrtb_pb2.BidRequest]]:
    hub: StreamHub[openrtb_pb2.BidRequest] = StreamHub()
    ex = Exchange(
        checker=checker,
        fan_out=bidders,
        hub=hub,
        clock=fixed_clock(),
        tmax_ms=100,
        new_id=lambda: "auction-1",
    )
    return ex, hub


def submit(
    ex: Exchange, token: str = "", floor: float = 1.0, domain: str = DOMAIN
) -> AuctionReport:
    imp = ex.validate(
        PUB, page_domain=domain, app_bundle="", placement_id="s", floor_price=floor, token=token
    )
    return ex.run(imp)


def test_pass_through_without_keys_and_first_price_winner() -> None:
    bidders = Bidders(1.5, 3.0, 2.0)
    ex, hub = exchange(bidders)
    sub = hub.subscribe()
    report = submit(ex, token="opaque-TOKEN")
    assert report.disposition is Disposition.PASSED_THROUGH
    assert report.winner == Candidate("b1", 3.0) and report.bids_received == 3
    assert uid2_token(bidders.seen[0]) == "opaque-TOKEN"
    captured = sub.get(0.1)
    assert captured is not None and captured.item.id == "auction-1"


def test_the_auction_fits_in_the_time_the_caller_has_left() -> None:
    bidders = Bidders(2.0)
    ex, hub = exchange(bidders)  # tmax 100 ms
    imp = ex.validate(
        PUB, page_domain=DOMAIN, app_bundle="", placement_id="s", floor_price=1.0, token=""
    )
    ex.run(imp, callers_time_left_ms=lambda: 10_000)
    assert (bidders.tmax_ms, bidders.seen[-1].tmax) == (100, 100)  # tmax, when that is shorter
    ex.run(imp, callers_time_left_ms=lambda: 45)
    assert (bidders.tmax_ms, bidders.seen[-1].tmax) == (40, 40)  # the caller's, less the margin
    sub = hub.subscribe()
    for left_ms in (9, 0, -50):
        with pytest.raises(ServiceError) as exc:
            ex.run(imp, callers_time_left_ms=functools.partial(int, left_ms))
        assert (exc.value.kind, exc.value.reason) == (
            ErrorKind.DEADLINE_EXCEEDED,
            "CALLER_DEADLINE",
        )
    assert len(bidders.seen) == 2  # no bidder asked for an auction nobody waits for
    assert sub.get(0.05) is None  # nor a bid request streamed


def test_the_callers_time_is_read_after_the_token_check() -> None:
    # The check may wait on an early key fetch (up to 0.1 s): the auction gets what is left.
    bidders = Bidders(2.0)
    ex, _ = exchange(bidders)
    spent_ms: list[int] = []

    class SlowChecker:
        def check(self, *_: object, **__: object) -> Verdict:
            spent_ms.append(40)  # waited 40 ms on a key fetch
            return Verdict.VALID

    ex._checker = SlowChecker()  # type: ignore[assignment]  # only check() is called
    imp = ex.validate(
        PUB, page_domain=DOMAIN, app_bundle="", placement_id="s", floor_price=1.0, token="t"
    )
    ex.run(imp, callers_time_left_ms=lambda: 60 - sum(spent_ms))
    assert bidders.tmax_ms == 15  # the 20 ms left after the check, less the margin


def test_no_token_absent_and_no_fill_below_floor() -> None:
    ex, _ = exchange(Bidders(0.5))
    report = submit(ex, floor=1.0)
    assert report.disposition is Disposition.ABSENT and report.winner is None


def test_decrypting_drops_bad_tokens() -> None:
    clock = fixed_clock()
    keys = KeySet(clock)
    cache = KeyCache(keys.body, clock)
    cache.refresh()
    optouts = loaded_optouts()
    checker = TokenChecker(cache, optouts, clock)
    bidders = Bidders(2.0)
    ex, _ = exchange(bidders, checker)
    good = mint(keys, uid=1)
    assert submit(ex, token=good).disposition is Disposition.VALID
    assert uid2_token(bidders.seen[-1]) == good
    expired = mint(keys, expires_in_s=1, created_ago_s=100)
    assert submit(ex, token=expired).disposition is Disposition.DROPPED_EXPIRED
    assert uid2_token(bidders.seen[-1]) is None
    assert submit(ex, token="A4notatoken" * 5).disposition is Disposition.DROPPED_INVALID
    optouts.add(raw_uid_b64(1), 1)
    assert submit(ex, token=good).disposition is Disposition.DROPPED_OPTOUT
    assert uid2_token(bidders.seen[-1]) is None
    # The raw UID2 never appears in anything sent.
    for req in bidders.seen:
        assert raw_uid_b64(1).encode() not in req.SerializeToString()


def test_a_token_naming_a_key_not_held_is_dropped_invalid_on_the_wire() -> None:
    # The proto's DROPPED_INVALID covers an unknown key: the report keeps the verdict apart.
    clock = fixed_clock()
    keys = KeySet(clock)
    cache = KeyCache(keys.body, clock)
    cache.refresh()
    bidders = Bidders(2.0)
    ex, _ = exchange(bidders, TokenChecker(cache, loaded_optouts(), clock))
    unshared = mint(keys, site_key=make_key(150, 11, 43, now=keys.now_s()))
    report = submit(ex, token=unshared)
    assert report.disposition is Disposition.DROPPED_INVALID
    assert report.verdict is Verdict.KEY_NOT_HELD
    assert uid2_token(bidders.seen[-1]) is None
    assert submit(ex, token="A4notatoken" * 5).verdict is Verdict.INVALID
    assert submit(ex, token=mint(keys)).verdict is Verdict.VALID
    assert submit(ex).verdict is None  # no token, nothing checked


def test_every_verdict_has_a_disposition() -> None:
    assert set(_BY_VERDICT) == set(Verdict)


def test_a_checking_ssp_without_keys_sends_no_token_on() -> None:
    """Operator credentials but no keys yet (the operator unreachable since start): an opted-out
    user's token cannot be told from any other, so none goes to bidders."""
    clock = fixed_clock()
    keys = KeySet(clock)
    checker = TokenChecker(
        KeyCache(keys.body, clock), loaded_optouts(), clock, early_refresh_wait_s=0
    )
    bidders = Bidders(2.0)
    ex, _ = exchange(bidders, checker)
    assert submit(ex, token=mint(keys)).disposition is Disposition.DROPPED_UNVERIFIED
    assert uid2_token(bidders.seen[-1]) is None


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"token": "x" * 501}, "TOKEN_TOO_LONG"),
        ({"domain": ""}, "INVENTORY_MISSING"),
        ({"domain": "   "}, "INVENTORY_MISSING"),
        ({"domain": "\t"}, "INVENTORY_MISSING"),
        ({"floor": -1.0}, "INVALID_FLOOR"),
        ({"floor": float("nan")}, "INVALID_FLOOR"),
        ({"domain": "evil.org"}, "INVENTORY_NOT_ALLOWED"),
        # A suffix match is on whole labels: badexample.com is not a subdomain of example.com.
        ({"domain": "badexample.com"}, "INVENTORY_NOT_ALLOWED"),
        ({"domain": "news.badexample.com"}, "INVENTORY_NOT_ALLOWED"),
    ],
)
def test_invalid_impressions(kw: dict[str, object], reason: str) -> None:
    ex, _ = exchange(Bidders())
    with pytest.raises(ServiceError) as exc:
        submit(ex, **kw)  # type: ignore[arg-type]  # deliberately wrong or loosely typed fields
    assert exc.value.reason == reason


def test_token_of_exactly_500_chars_is_accepted() -> None:
    ex, _ = exchange(Bidders())
    assert submit(ex, token="y" * 500).disposition is Disposition.PASSED_THROUGH


@pytest.mark.parametrize(
    ("account", "inventory"),
    [
        (PUB, {"page_domain": "", "app_bundle": "com.x"}),
        (PUB, {"page_domain": DOMAIN, "app_bundle": "com.x"}),
        (Account("p2", "App", AccountKind.PUBLISHER, (), ("com.x",)),
         {"page_domain": DOMAIN, "app_bundle": ""}),
        (Account("p3", "None", AccountKind.PUBLISHER), {"page_domain": DOMAIN, "app_bundle": ""}),
    ],
)  # fmt: skip
def test_a_publisher_sells_only_the_kind_of_inventory_it_registered(
    account: Account, inventory: dict[str, str]
) -> None:
    ex, _ = exchange(Bidders(2.0))
    with pytest.raises(ServiceError) as exc:
        ex.validate(account, placement_id="p1", floor_price=0.0, token="", **inventory)
    assert exc.value.reason == "INVENTORY_NOT_ALLOWED"
    assert exc.value.kind is ErrorKind.PERMISSION_DENIED


def test_an_app_publisher_sells_its_registered_bundle() -> None:
    ex, _ = exchange(Bidders(2.0))
    app_pub = Account("p2", "App", AccountKind.PUBLISHER, (), ("com.x",))
    imp = ex.validate(
        app_pub, page_domain="", app_bundle="com.x", placement_id="p1", floor_price=0.0, token=""
    )
    assert ex.run(imp).winner == Candidate("b0", 2.0)


@pytest.mark.parametrize(
    "domain",
    [
        "victim.com/.example.com",
        "victim.com .example.com",
        "victim.com#.example.com",
        "victim.com?x=.example.com",
        "victim.com:443.example.com",
        "a..example.com",
    ],
)
def test_a_page_domain_that_is_no_host_name_is_refused(domain: str) -> None:
    """Security: the suffix match must not let a publisher of example.com sell inventory under a
    string that only ends with ".example.com" (a DSP parsing it as a URL sees victim.com)."""
    bidders = Bidders(2.0)
    ex, _ = exchange(bidders)
    with pytest.raises(ServiceError) as exc:
        submit(ex, domain=domain)
    assert exc.value.reason == "INVALID_PAGE_DOMAIN"
    assert bidders.seen == []


def test_a_page_domain_is_sent_on_normalised() -> None:
    bidders = Bidders(2.0)
    ex, _ = exchange(bidders)
    submit(ex, domain=" News.Example.COM. ")
    assert bidders.seen[-1].site.domain == "news.example.com"
