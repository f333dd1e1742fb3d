"""Limits on an impression's fields, shared by the SSP (SubmitImpression), which enforces them,
and the publisher (ServeAd), which checks them first: a caller's NaN floor or oversized
placement id is then its own INVALID_ARGUMENT at the publisher, not an SSP refusal of the
publisher, and both services always agree on the bounds."""

from __future__ import annotations

import math

from svc_common.errors import invalid_argument

MAX_FIELD_CHARS = 256
# A UID2 advertising token is opaque and at most 500 characters (uid2-reference.md): the SSP
# refuses a longer one (TOKEN_TOO_LONG), and the publisher treats a cookie holding one as not
# an identity rather than send it.
MAX_TOKEN_CHARS = 500
MAX_FLOOR_PRICE = 1_000_000.0


def check_field_lengths(**fields: str) -> None:
    """INVALID_ARGUMENT FIELD_TOO_LONG naming the first field over MAX_FIELD_CHARS."""
    for name, value in fields.items():
        if len(value) > MAX_FIELD_CHARS:
            raise invalid_argument("FIELD_TOO_LONG", f"{name} exceeds {MAX_FIELD_CHARS} chars")


def check_floor_price(floor_price: float, reason: str) -> None:
    """INVALID_ARGUMENT `reason` unless 0 <= floor_price <= MAX_FLOOR_PRICE. NaN fails every
    comparison, so it is refused explicitly, with the infinities."""
    if not math.isfinite(floor_price) or not 0 <= floor_price <= MAX_FLOOR_PRICE:
        raise invalid_argument(reason, "floor_price must be between 0 and 1e6")
