"""Where a UID2 token travels in an OpenRTB bid request: `user.eids`, source "uidapi.com",
`atype` 3 (a person-based ID). The SSP writes it there; bidders read it back."""

from __future__ import annotations

from uid2.ssp.v1 import openrtb_pb2

UID2_SOURCE = "uidapi.com"
ATYPE_PERSON = 3


def uid2_token(request: openrtb_pb2.BidRequest) -> str | None:
    """The UID2 token in a bid request's user.eids, or None (for bidders)."""
    for eid in request.user.eids:
        if eid.source == UID2_SOURCE:
            for uid in eid.uids:
                if uid.id:
                    return uid.id
    return None
