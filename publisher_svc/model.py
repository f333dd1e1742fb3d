"""Plain domain types the publisher works with, and the interfaces of its two peers (the
operator and the SSP). No gRPC here: the peer clients translate to and from protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from svc_common import errors


@dataclass(frozen=True)
class Identity:
    """A UID2 identity as the operator issued it. Times are epoch milliseconds. The tokens are
    opaque: never parsed, never changed, never logged."""

    advertising_token: str
    refresh_token: str
    identity_expires: int
    refresh_from: int
    refresh_expires: int
    refresh_response_key: str

    def __repr__(self) -> str:  # tokens must never reach a log line by accident
        return (
            f"Identity(identity_expires={self.identity_expires}, "
            f"refresh_from={self.refresh_from}, refresh_expires={self.refresh_expires})"
        )


class StorageMode(Enum):
    """Where the publisher keeps a user's identity: in its own store (a mapping table, by user
    id) or in a first-party cookie it hands the caller."""

    SERVER = "server"
    CLIENT = "client"


class DiiKind(Enum):
    EMAIL = "email"
    PHONE = "phone"


@dataclass(frozen=True)
class HashedDii:
    """The normalised DII's SHA-256 in standard base64 (44 characters). The only form of DII
    that leaves the publisher."""

    kind: DiiKind
    hash_b64: str

    @property
    def key(self) -> str:
        """The key the publisher records operator opt-outs under."""
        return f"{self.kind.value}:{self.hash_b64}"

    def __repr__(self) -> str:
        return f"HashedDii(kind={self.kind.value})"


@dataclass(frozen=True)
class PrivacySettings:
    transparency_notice_accepted: bool
    tcf_consent_string: str = ""


class GenerateOutcome(Enum):
    SUCCESS = "SUCCESS"
    OPTOUT = "OPTOUT"
    INSUFFICIENT_CONSENT = "INSUFFICIENT_CONSENT"


class RefreshOutcome(Enum):
    SUCCESS = "SUCCESS"
    OPTOUT = "OPTOUT"
    EXPIRED_TOKEN = "EXPIRED_TOKEN"  # noqa: S105 - a status name
    INVALID_TOKEN = "INVALID_TOKEN"  # noqa: S105 - a status name


@dataclass(frozen=True)
class GenerateResult:
    outcome: GenerateOutcome
    identity: Identity | None = None


@dataclass(frozen=True)
class RefreshResult:
    outcome: RefreshOutcome
    identity: Identity | None = None


@dataclass(frozen=True)
class Impression:
    page_domain: str
    placement_id: str
    floor_price: float
    # Exactly as received from the operator; "" for none. Never in repr.
    advertising_token: str = field(repr=False)
    app_bundle: str = ""  # app / CTV inventory: set instead of page_domain (then "")


@dataclass(frozen=True)
class WinningBid:
    bidder: str
    price: float
    ad_markup: str
    creative_id: str


class AuctionOutcome(Enum):
    """How the SSP's auction ended (uid2.ssp.v1.AuctionOutcome, one member per proto value).
    UNSPECIFIED also stands for a value from an SSP on a newer schema."""

    UNSPECIFIED = "UNSPECIFIED"
    FILLED = "FILLED"
    NO_FILL = "NO_FILL"


class TokenDisposition(Enum):
    """What the SSP did with the token (uid2.ssp.v1.TokenDisposition, one member per proto
    value). UNSPECIFIED also stands for a value from an SSP on a newer schema."""

    UNSPECIFIED = "UNSPECIFIED"
    ABSENT = "ABSENT"
    PASSED_THROUGH = "PASSED_THROUGH"
    VALID = "VALID"
    DROPPED_EXPIRED = "DROPPED_EXPIRED"
    DROPPED_INVALID = "DROPPED_INVALID"
    DROPPED_OPTOUT = "DROPPED_OPTOUT"
    DROPPED_UNVERIFIED = "DROPPED_UNVERIFIED"


@dataclass(frozen=True)
class AdDecision:
    """The SSP's answer to one impression."""

    auction_id: str
    outcome: AuctionOutcome
    token_disposition: TokenDisposition
    bids_received: int
    winning_bid: WinningBid | None = None


# PeerError.reason of a call cut short (or not retried) because the deadline of the caller it
# was made for passed: nobody waits for its answer any more.
CALLER_DEADLINE = errors.CALLER_DEADLINE


class PeerError(Exception):
    """A peer (operator or SSP) failed. `unavailable` is True when it could not be reached or
    answered UNAVAILABLE / DEADLINE_EXCEEDED even after retries: worth trying again later.
    The message never carries request data."""

    def __init__(self, peer: str, code: str, reason: str, *, unavailable: bool) -> None:
        super().__init__(f"{peer} {code} {reason}".strip())
        self.peer = peer
        self.code = code
        self.reason = reason
        self.unavailable = unavailable


class OperatorPeer(Protocol):
    def generate(
        self, dii: HashedDii, privacy: PrivacySettings, on_behalf_of_site_id: int
    ) -> GenerateResult: ...

    def refresh(self, refresh_token: str) -> RefreshResult: ...


class SspPeer(Protocol):
    def submit_impression(self, impression: Impression) -> AdDecision: ...
