"""The SSP's core: one impression in, one auction out.

Validates the impression, decides what happens to the UID2 token (pass through, keep or drop
after decrypting), builds the bid request, publishes it to the bid-stream capture, fans it out
to bidders and runs the first-price auction. No gRPC here: bidders arrive as a callable."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from bidstream.decryptor.checker import TokenChecker, Verdict
from ssp_svc.auction import Candidate, run_auction
from ssp_svc.bid_request import Disposition, Impression, build_bid_request
from ssp_svc.bidders import FanOutResult
from ssp_svc.store.accounts import Account
from ssp_svc.stream_hub import StreamHub
from svc_common import errors
from svc_common.clock import Clock
from svc_common.errors import ErrorKind, ServiceError, invalid_argument
from svc_common.impression_limits import MAX_TOKEN_CHARS, check_field_lengths, check_floor_price
from svc_common.names import domain_allowed, normalise_domain
from uid2.ssp.v1 import openrtb_pb2

FanOut = Callable[[openrtb_pb2.BidRequest, int], FanOutResult]

# Of the caller's remaining time, what answering takes after the bidders' answers are in.
ANSWER_MARGIN_MS = 5
# Less time than this for bidders to answer is no auction: none would make it.
MIN_AUCTION_MS = 5
CALLER_DEADLINE = errors.CALLER_DEADLINE

_BY_VERDICT = {
    Verdict.VALID: Disposition.VALID,
    Verdict.EXPIRED: Disposition.DROPPED_EXPIRED,
    Verdict.INVALID: Disposition.DROPPED_INVALID,
    # The proto's DROPPED_INVALID covers "unknown key"; the call line and /metrics tell it apart.
    Verdict.KEY_NOT_HELD: Disposition.DROPPED_INVALID,
    Verdict.OPTED_OUT: Disposition.DROPPED_OPTOUT,
    # Privacy first: a token is not sent on while an opt-out for it might still be on its way.
    Verdict.OPTOUTS_LOADING: Disposition.DROPPED_UNVERIFIED,
    # An SSP that checks tokens but holds no keys yet (the operator unreachable since it
    # started) cannot tell an opted-out user's token from any other: it sends none on.
    Verdict.NO_KEYS: Disposition.DROPPED_UNVERIFIED,
}


@dataclass(frozen=True)
class AuctionReport:
    auction_id: str
    winner: Candidate | None
    disposition: Disposition
    bids_received: int
    # The decryptor's verdict on the token (None: no token, or tokens pass through unchecked);
    # finer than the disposition, for the call's log line.
    verdict: Verdict | None = None


def _new_id() -> str:
    return uuid.uuid4().hex


class Exchange:
    def __init__(
        self,
        *,
        checker: TokenChecker | None,
        fan_out: FanOut,
        hub: StreamHub[openrtb_pb2.BidRequest],
        clock: Clock,
        tmax_ms: int,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self._checker = checker
        self._fan_out = fan_out
        self._hub = hub
        self._clock = clock
        self._tmax_ms = tmax_ms
        self._new_id = new_id

    @property
    def decrypting(self) -> bool:
        return self._checker is not None

    def validate(
        self,
        account: Account,
        *,
        page_domain: str,
        app_bundle: str,
        placement_id: str,
        floor_price: float,
        token: str,
    ) -> Impression:
        if len(token) > MAX_TOKEN_CHARS:
            raise invalid_argument("TOKEN_TOO_LONG", f"token exceeds {MAX_TOKEN_CHARS} characters")
        # Blank inventory is no inventory: a page_domain of spaces must not slip past the
        # allow-list below (which it would, stripped to "") and sell a site with no domain.
        if not page_domain.strip() and not app_bundle.strip():
            raise invalid_argument("INVENTORY_MISSING", "page_domain or app_bundle is required")
        check_field_lengths(
            page_domain=page_domain, app_bundle=app_bundle, placement_id=placement_id
        )
        check_floor_price(floor_price, "INVALID_FLOOR")
        domain = ""
        if page_domain.strip():
            # Only a host name can be inventory: anything else ("victim.com/.example.com")
            # would pass the suffix match below while naming someone else's site.
            try:
                domain = normalise_domain(page_domain)
            except ValueError:
                raise invalid_argument(
                    "INVALID_PAGE_DOMAIN", "page_domain must be a host name like news.example.com"
                ) from None
        # A publisher sells only inventory it registered: one registered only with domains has
        # no app inventory to sell, and the other way round.
        if domain and not domain_allowed(domain, account.domains):
            raise ServiceError(
                ErrorKind.PERMISSION_DENIED,
                "INVENTORY_NOT_ALLOWED",
                "page_domain is not one of the publisher's domains",
            )
        # Stripped, as the stored bundles (names.check_app_name) and a stream's filter are.
        app_bundle = app_bundle.strip()
        if app_bundle and app_bundle not in account.apps:
            raise ServiceError(
                ErrorKind.PERMISSION_DENIED,
                "INVENTORY_NOT_ALLOWED",
                "app_bundle is not one of the publisher's apps",
            )
        return Impression(
            publisher_id=account.account_id,
            publisher_name=account.name,
            page_domain=domain,
            app_bundle=app_bundle,
            placement_id=placement_id,
            floor_price=floor_price,
            token=token,
        )

    def disposition(self, imp: Impression) -> tuple[Disposition, Verdict | None]:
        """What happens to the token, and the decryptor's verdict on it when one was made."""
        if not imp.token:
            return Disposition.ABSENT, None
        if self._checker is None:
            return Disposition.PASSED_THROUGH, None
        verdict = self._checker.check(
            imp.token, imp.app_bundle or imp.page_domain, app=bool(imp.app_bundle)
        )
        return _BY_VERDICT[verdict], verdict

    def run(
        self, imp: Impression, *, callers_time_left_ms: Callable[[], int] | None = None
    ) -> AuctionReport:
        """Runs the auction within tmax, or within the time the caller has left when that is
        shorter (less ANSWER_MARGIN_MS, to get the answer back): the bid request's tmax says
        so to the bidders. `callers_time_left_ms` is read once the token is checked, which may
        have waited on a key fetch. A caller with no time for an auction is answered
        DEADLINE_EXCEEDED CALLER_DEADLINE and no bid request goes out: an auction nobody waits
        for would still ask every bidder and reach the bid-stream readers."""
        disposition, verdict = self.disposition(imp)
        tmax_ms = self._tmax_ms
        if callers_time_left_ms is not None:
            tmax_ms = min(tmax_ms, callers_time_left_ms() - ANSWER_MARGIN_MS)
            if tmax_ms < MIN_AUCTION_MS:
                raise ServiceError(
                    ErrorKind.DEADLINE_EXCEEDED,
                    CALLER_DEADLINE,
                    "the call's deadline leaves no time for an auction",
                )
        auction_id = self._new_id()
        request = build_bid_request(auction_id, imp, disposition, tmax_ms)
        self._hub.publish(request, self._clock.now_ms())
        fanned = self._fan_out(request, tmax_ms)
        winner = run_auction(fanned.candidates, imp.floor_price)
        return AuctionReport(auction_id, winner, disposition, len(fanned.candidates), verdict)
