"""DII as the domain sees it: `(kind, value)` with kind one of email, email_hash, phone,
phone_hash, turned into (identity type, first-level hash)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from svc_common.errors import invalid_argument
from uid2_crypto.errors import InvalidIdentifierError
from uid2_crypto.identity import IdentityType, identity_hash
from uid2_crypto.salts import first_level_hash

KINDS = ("email", "email_hash", "phone", "phone_hash")


def hash_dii(kind: str, value: str) -> tuple[IdentityType, bytes]:
    """(identity type, identity hash) or ServiceError INVALID_ARGUMENT with the reason
    MISSING_DII or INVALID_EMAIL / INVALID_PHONE / INVALID_EMAIL_HASH / INVALID_PHONE_HASH."""
    if kind not in KINDS:
        raise invalid_argument("MISSING_DII", "exactly one of email, email_hash, phone, phone_hash")
    try:
        return identity_hash(kind, value)
    except InvalidIdentifierError as exc:
        raise invalid_argument(exc.reason, str(exc)) from None


def dii_flh(kind: str, value: str, first_level_salt: str) -> tuple[IdentityType, bytes]:
    """(identity type, first-level hash) of a DII; raises like `hash_dii`."""
    identity_type, ih = hash_dii(kind, value)
    return identity_type, first_level_hash(ih, first_level_salt)


def dii_of_fields(fields: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, value) from a mapping that names the DII by field (the HTTP API's JSON bodies):
    ("", "") when none of email, email_hash, phone, phone_hash is present (the domain then
    answers MISSING_DII); INVALID_ARGUMENT when several are, or the value is not a string."""
    present = [k for k in KINDS if fields.get(k) is not None]
    if not present:
        return "", ""
    if len(present) > 1:
        raise invalid_argument(
            "MULTIPLE_DII", "exactly one of email, email_hash, phone, phone_hash"
        )
    kind = present[0]
    value = fields[kind]
    if not isinstance(value, str):
        raise invalid_argument("INVALID_DII", f"{kind} must be a string")
    return kind, value
