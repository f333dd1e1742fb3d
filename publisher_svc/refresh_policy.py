"""The refresh decision, as pure functions of an identity and the current time (reference §1
step 7, §4 lifetimes). The publisher, its client-side refresh and the background refresher all
decide through here."""

from __future__ import annotations

from enum import Enum

from publisher_svc.model import Identity


class Decision(Enum):
    USE = "USE"  # now < refresh_from: the stored token is current
    REFRESH = "REFRESH"  # refresh_from <= now < refresh_expires: refresh first
    LOGIN_REQUIRED = "LOGIN_REQUIRED"  # now >= refresh_expires: the chain is over


def decide(identity: Identity, now_ms: int) -> Decision:
    if now_ms >= identity.refresh_expires:
        return Decision.LOGIN_REQUIRED
    # A token past identity_expires is never used as is, even if refresh_from were (wrongly)
    # later than identity_expires.
    if now_ms >= identity.refresh_from or now_ms >= identity.identity_expires:
        return Decision.REFRESH
    return Decision.USE


def usable_without_refresh(identity: Identity, now_ms: int) -> bool:
    """Whether the stored advertising token may still be sent when a due refresh could not
    reach the operator: only while it has not expired."""
    return now_ms < identity.identity_expires and now_ms < identity.refresh_expires
