"""Fan-out of one bid request to every configured bidder at once (BidderService.Bid), each
call bounded by tmax. A late, failing or garbage-answering bidder is left out; it never fails
the auction. Uses the stubs' `.future()` calls: no thread per bidder."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import structlog

from ssp_svc.auction import Candidate
from ssp_svc.bid_request import CURRENCY
from svc_common.errors import failure_fields
from svc_common.failure_log import FAILURE_LOG_INTERVAL_S as FAILURE_LOG_INTERVAL_S
from svc_common.failure_log import FailureLog
from svc_common.grpc_client import to_remote_error
from svc_common.impression_limits import MAX_FLOOR_PRICE
from svc_common.tls import PeerTls
from svc_common.tls_reload import open_channel
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc

_log = structlog.get_logger("bidders")


@dataclass(frozen=True)
class BidderTarget:
    name: str
    address: str


# What an auction got from one bidder -> the BidderStats field counting it.
BIDDER_OUTCOMES = {
    "bid": "bids",
    "no_bid": "no_bids",
    "timeout": "timeouts",
    "error": "errors",
    "garbage": "garbage",
}


class BidderUnreachable(Exception):
    """The call could not even be placed (its channel closed)."""


_UNREACHABLE = BidderUnreachable()


@dataclass
class BidderStats:
    bids: int = 0
    no_bids: int = 0
    timeouts: int = 0
    errors: int = 0
    garbage: int = 0


@dataclass
class FanOutResult:
    candidates: list[Candidate] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    garbage: int = 0


class GarbageResponse(Exception):
    """A bid response that breaks the protocol (wrong auction id, unknown imp, a non-finite or
    negative price, a foreign currency)."""


def best_valid_bid(
    bidder: str, request: openrtb_pb2.BidRequest, response: openrtb_pb2.BidResponse
) -> Candidate | None:
    """The bidder's highest well-formed bid; None for a clean no-bid. Raises GarbageResponse."""
    if response.id != request.id:
        raise GarbageResponse("auction id mismatch")
    if response.cur and response.cur != CURRENCY:
        raise GarbageResponse("foreign currency")
    imp_ids = {imp.id for imp in request.imp}
    best: Candidate | None = None
    for seat in response.seatbid:
        for bid in seat.bid:
            # Above the highest floor a publisher may set, a price is a bidder's bug (1e308
            # won every auction), not a bid.
            if bid.impid not in imp_ids or not 0 <= bid.price <= MAX_FLOOR_PRICE:
                raise GarbageResponse("malformed bid")
            if bid.price == 0:
                continue
            if best is None or bid.price > best.price:
                best = Candidate(bidder, bid.price, bid.id, bid.adm, bid.crid)
    return best


class _FailureLog(FailureLog):
    """A bidder down, refusing us or answering garbage otherwise shows only as auctions without
    its bids. Its first failure is logged at once, then at most one line per
    FAILURE_LOG_INTERVAL_S with the failures since (the last one's code): a bidder that misses
    one auction in five (normal in real-time bidding) is a line every 30 s, not two per miss.
    Failures held back are written once their interval is over, at the bidder's next auction
    whatever its outcome (`tick`), not at its next failure, which may be hours later. Callers
    hold the pool's lock."""

    def __init__(self, bidder: str) -> None:
        # At most one `bidder_failed` line per bidder every FAILURE_LOG_INTERVAL_S.
        super().__init__(_log.bind(bidder=bidder), "bidder_failed", every_s=FAILURE_LOG_INTERVAL_S)

    def failed(self, failure: BaseException, now: float) -> None:
        self.record(failure_fields(failure), now)


class BidderPool:
    def __init__(self, targets: Sequence[BidderTarget], tls: PeerTls | None = None) -> None:
        self.targets = tuple(targets)
        self._channels = [open_channel(t.address, tls) for t in self.targets]
        self._stubs = [openrtb_pb2_grpc.BidderServiceStub(c) for c in self._channels]
        self.stats = {t.name: BidderStats() for t in self.targets}
        self._failures = {t.name: _FailureLog(t.name) for t in self.targets}
        self._lock = threading.Lock()

    def fan_out(self, request: openrtb_pb2.BidRequest, tmax_ms: int) -> FanOutResult:
        timeout_s = tmax_ms / 1000
        deadline = time.monotonic() + timeout_s
        futures = []
        for stub in self._stubs:
            try:
                futures.append(stub.Bid.future(request, timeout=timeout_s))
            except Exception:  # a closed channel: treat as a failed bidder
                futures.append(None)
        result = FanOutResult()
        outcomes: list[tuple[str, BaseException | None]] = []
        for target, fut in zip(self.targets, futures, strict=True):
            outcome = "error"
            failure: BaseException | None = _UNREACHABLE
            if fut is not None:
                try:
                    response = fut.result(timeout=max(0.0, deadline - time.monotonic()) + 0.005)
                    best = best_valid_bid(target.name, request, response)
                    failure = None
                    if best is None:
                        outcome = "no_bid"
                    else:
                        result.candidates.append(best)
                        outcome = "bid"
                except grpc.FutureTimeoutError as exc:
                    fut.cancel()
                    outcome, failure = "timeout", exc
                except grpc.RpcError as err:
                    timed_out = err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    # As a RemoteError: bidder_failed then tells a bidder that closes our
                    # connection or fails its TLS handshake from one that is down.
                    outcome, failure = ("timeout" if timed_out else "error"), to_remote_error(err)
                except Exception as exc:  # a response that does not parse, or any other surprise
                    outcome, failure = "garbage", exc
            outcomes.append((outcome, failure))
        now = time.monotonic()
        with self._lock:
            for target, (outcome, failure) in zip(self.targets, outcomes, strict=True):
                if failure is None:
                    self._failures[target.name].tick(now)
                else:
                    self._failures[target.name].failed(failure, now)
                stats = self.stats[target.name]
                if outcome == "bid":
                    stats.bids += 1
                elif outcome == "no_bid":
                    stats.no_bids += 1
                elif outcome == "timeout":
                    stats.timeouts += 1
                    result.timeouts += 1
                elif outcome == "garbage":
                    stats.garbage += 1
                    result.garbage += 1
                else:
                    stats.errors += 1
                    result.errors += 1
        return result

    def counts(self) -> Mapping[tuple[str, ...], float]:
        """(bidder, outcome) -> auctions so far, outcome one of BIDDER_OUTCOMES (/metrics)."""
        with self._lock:
            return {
                (name, outcome): getattr(stats, stat)
                for name, stats in self.stats.items()
                for outcome, stat in BIDDER_OUTCOMES.items()
            }

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
