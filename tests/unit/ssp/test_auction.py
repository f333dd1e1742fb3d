import math

from ssp_svc.auction import Candidate, run_auction


def c(bidder: str, price: float) -> Candidate:
    return Candidate(bidder, price)


def test_highest_bid_wins_and_pays_its_own_price() -> None:
    winner = run_auction([c("a", 1.0), c("b", 2.5), c("c", 2.0)], floor=0.5)
    assert winner == c("b", 2.5)


def test_no_fill_below_floor() -> None:
    assert run_auction([c("a", 1.0), c("b", 0.99)], floor=1.5) is None


def test_bid_equal_to_floor_wins() -> None:
    assert run_auction([c("a", 1.5)], floor=1.5) == c("a", 1.5)


def test_no_bids_no_fill() -> None:
    assert run_auction([], floor=0.0) is None


def test_tie_goes_to_the_first_bidder() -> None:
    assert run_auction([c("a", 2.0), c("b", 2.0)], floor=0).bidder == "a"  # type: ignore[union-attr]  # a None fails the test here anyway


def test_non_finite_and_non_positive_prices_never_win() -> None:
    bids = [c("nan", math.nan), c("inf", math.inf), c("neg", -1.0), c("zero", 0.0)]
    assert run_auction(bids, floor=0.0) is None
    assert run_auction([*bids, c("ok", 0.01)], floor=0.0) == c("ok", 0.01)
