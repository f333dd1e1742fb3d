"""Builds the OpenRTB 2.6-shaped bid request for one impression.

The UID2 token goes into `user.eids` exactly as the publisher sent it, and only when its
disposition allows (VALID or PASSED_THROUGH). Nothing else about the user is ever added: raw
UID2s stay inside the SSP."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from bidstream.eids import ATYPE_PERSON, source_of
from uid2.ssp.v1 import openrtb_pb2

FIRST_PRICE = 1
CURRENCY = "USD"


class Disposition(Enum):
    """What happens to an impression's token (mirrors the proto's TokenDisposition)."""

    ABSENT = "ABSENT"
    PASSED_THROUGH = "PASSED_THROUGH"
    VALID = "VALID"
    DROPPED_EXPIRED = "DROPPED_EXPIRED"
    DROPPED_INVALID = "DROPPED_INVALID"
    DROPPED_OPTOUT = "DROPPED_OPTOUT"
    DROPPED_UNVERIFIED = "DROPPED_UNVERIFIED"

    @property
    def carries_token(self) -> bool:
        return self in (Disposition.VALID, Disposition.PASSED_THROUGH)


@dataclass(frozen=True)
class Impression:
    """A validated impression, as the SSP's domain sees it."""

    publisher_id: str
    publisher_name: str
    page_domain: str
    app_bundle: str
    placement_id: str
    floor_price: float
    token: str = field(repr=False)  # the user's advertising token: never logged


IMP_ID = "1"


def build_bid_request(
    auction_id: str, imp: Impression, disposition: Disposition, tmax_ms: int
) -> openrtb_pb2.BidRequest:
    request = openrtb_pb2.BidRequest(
        id=auction_id,
        imp=[
            openrtb_pb2.Imp(
                id=IMP_ID,
                tagid=imp.placement_id,
                bidfloor=imp.floor_price,
                bidfloorcur=CURRENCY,
            )
        ],
        tmax=tmax_ms,
        at=FIRST_PRICE,
        cur=[CURRENCY],
    )
    publisher = openrtb_pb2.Publisher(id=imp.publisher_id, name=imp.publisher_name)
    if imp.app_bundle:
        request.app.CopyFrom(openrtb_pb2.App(bundle=imp.app_bundle, publisher=publisher))
    else:
        request.site.CopyFrom(openrtb_pb2.Site(domain=imp.page_domain, publisher=publisher))
    if imp.token and disposition.carries_token:
        request.user.eids.append(
            openrtb_pb2.Eid(
                source=source_of(imp.token),
                uids=[openrtb_pb2.Uid(id=imp.token, atype=ATYPE_PERSON)],
            )
        )
    return request
