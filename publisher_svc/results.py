"""What the publisher's calls answer: statuses, the one refresh step, cookies and results.
Business outcomes (opt-out, login required) are these enums, not errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from publisher_svc.model import AdDecision, Identity


class LoginStatus(Enum):
    SUCCESS = "SUCCESS"
    OPTOUT = "OPTOUT"
    SITE_OPTOUT = "SITE_OPTOUT"
    INSUFFICIENT_CONSENT = "INSUFFICIENT_CONSENT"


class TokenStatus(Enum):
    SUCCESS = "SUCCESS"
    NO_IDENTITY = "NO_IDENTITY"
    OPTOUT = "OPTOUT"
    LOGIN_REQUIRED = "LOGIN_REQUIRED"


class StepKind(Enum):
    """What one pass of the refresh logic did with an identity."""

    USE = "USE"  # not due: the stored identity as is
    REFRESHED = "REFRESHED"  # the operator issued a new identity
    STALE = "STALE"  # due, operator unreachable, token still unexpired: keep using it
    OPTOUT = "OPTOUT"  # the refresh answered opt-out: the chain is over
    LOGIN_REQUIRED = "LOGIN_REQUIRED"  # refresh token expired or refused


_SERVING_KINDS = frozenset({StepKind.USE, StepKind.STALE, StepKind.REFRESHED})


@dataclass(frozen=True)
class Step:
    kind: StepKind
    identity: Identity | None = None
    # STALE because the operator was not asked (OPERATOR_BUSY), not because it failed: no
    # failed attempt to count, no back-off to start.
    not_asked: bool = False

    def __post_init__(self) -> None:
        # Checked here, once, with a real exception (an assert vanishes under python -O), so
        # every reader of `serving` can trust it.
        if (self.kind in _SERVING_KINDS) != (self.identity is not None):
            raise ValueError(
                f"a {self.kind.value} step must carry an identity exactly when it keeps one in use"
            )

    @property
    def serving(self) -> Identity | None:
        """The identity to keep serving (USE, STALE, REFRESHED); None when the chain ended."""
        return self.identity


@dataclass(frozen=True)
class Cookie:
    name: str
    value: str = field(repr=False)  # the encoded identity, tokens and all
    expires: int


@dataclass(frozen=True)
class LoginResult:
    status: LoginStatus
    cookie: Cookie | None = None
    refresh_from: int = 0
    # Client-side mode: every refusal also ends the identity the caller may hold as a cookie.
    clear_cookie: bool = False


@dataclass(frozen=True)
class TokenResult:
    status: TokenStatus
    advertising_token: str = field(default="", repr=False)
    identity_expires: int = 0
    refreshed: bool = False


@dataclass(frozen=True)
class ClientRefreshResult:
    status: TokenStatus  # SUCCESS, OPTOUT or LOGIN_REQUIRED
    cookie: Cookie | None = None
    refreshed: bool = False
    advertising_token: str = field(default="", repr=False)
    # SUCCESS with the held token because the operator could not be reached (not because it
    # was busy: OPERATOR_BUSY, not asked): the refresh is to be tried again later.
    operator_failed: bool = False
    identity_expires: int = 0  # of the token, on SUCCESS

    @property
    def clear_cookie(self) -> bool:
        return self.status is not TokenStatus.SUCCESS


@dataclass(frozen=True)
class AdResult:
    decision: AdDecision
    token_sent: bool
    cookie: Cookie | None = None
    clear_cookie: bool = False


def token_result(step: Step) -> TokenResult:
    serving = step.serving
    if serving is not None:
        return TokenResult(
            TokenStatus.SUCCESS,
            serving.advertising_token,
            serving.identity_expires,
            step.kind is StepKind.REFRESHED,
        )
    if step.kind is StepKind.OPTOUT:
        return TokenResult(TokenStatus.OPTOUT)
    return TokenResult(TokenStatus.LOGIN_REQUIRED)
