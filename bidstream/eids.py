"""Where a token travels in an OpenRTB bid request: `user.eids`, `atype` 3 (a person-based ID),
under its scope's source: "uidapi.com" for a UID2 token, "euid.eu" for an EUID one, as each
scope's documentation and bidders name them. The SSP writes it there; bidders read it back."""

from __future__ import annotations

from uid2.ssp.v1 import openrtb_pb2
from uid2_crypto.identity import IdentityScope
from uid2_crypto.tokens import claimed_scope

UID2_SOURCE = "uidapi.com"
EUID_SOURCE = "euid.eu"
ATYPE_PERSON = 3


def source_of(token: str) -> str:
    """The eid source a token goes under, by the scope its prefix claims."""
    return EUID_SOURCE if claimed_scope(token) is IdentityScope.EUID else UID2_SOURCE


def uid2_token(request: openrtb_pb2.BidRequest) -> str | None:
    """The UID2 or EUID token in a bid request's user.eids, or None (for bidders)."""
    for eid in request.user.eids:
        if eid.source in (UID2_SOURCE, EUID_SOURCE):
            for uid in eid.uids:
                if uid.id:
                    return uid.id
    return None
