"""The caller's input the publisher checks itself: DII (normalised and hashed here; only the
hash leaves), user ids, and the first-party cookie it hands out."""

from __future__ import annotations

import base64

from publisher_svc.cookie import COOKIE_NAME, EUID_COOKIE_NAME, encode_cookie
from publisher_svc.model import DiiKind, HashedDii, Identity
from publisher_svc.results import Cookie
from svc_common.errors import invalid_argument
from uid2_crypto.errors import InvalidIdentifierError
from uid2_crypto.identity import IdentityScope, IdentityType, identity_hash
from uid2_crypto.tokens import claimed_scope

MAX_USER_ID_CHARS = 256


def hash_dii(
    email: str | None,
    phone: str | None,
    email_hash: str | None = None,
    phone_hash: str | None = None,
) -> HashedDii:
    """Normalises and hashes the DII locally (reference §2); only the hash leaves. The same
    function as the operator's, so what the operator would refuse as DII (too long, not an
    email) is refused here with the same reason, not hashed into a valid-looking hash. A hash
    given instead (base64 or hex SHA-256 of the normalised DII, as the operator's Dii takes)
    comes out in the one canonical base64 spelling, so it keys the same opt-out record as the
    DII it is the hash of."""
    given = (("email", email), ("phone", phone), ("email_hash", email_hash))
    kind, value = next(((k, v) for k, v in given if v is not None), ("phone_hash", phone_hash))
    if value is None:
        raise invalid_argument("MISSING_DII", "an email or a phone number is required")
    try:
        identity_type, digest = identity_hash(kind, value)
    except InvalidIdentifierError as exc:
        raise invalid_argument(exc.reason, str(exc)) from None
    dii_kind = DiiKind.EMAIL if identity_type is IdentityType.EMAIL else DiiKind.PHONE
    return HashedDii(dii_kind, base64.b64encode(digest).decode("ascii"))


def check_user_id(user_id: str) -> str:
    if not user_id:
        raise invalid_argument("MISSING_USER_ID", "user_id is required")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise invalid_argument("INVALID_USER_ID", f"user_id exceeds {MAX_USER_ID_CHARS} chars")
    return user_id


def cookie_for(identity: Identity) -> Cookie:
    """The cookie the identity goes back in: its scope's, as that scope's JS SDK reads it."""
    scope = claimed_scope(identity.advertising_token)
    name = EUID_COOKIE_NAME if scope is IdentityScope.EUID else COOKIE_NAME
    return Cookie(name, encode_cookie(identity), identity.refresh_expires)
