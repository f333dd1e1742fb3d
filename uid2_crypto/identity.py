"""Normalising and hashing DII (reference §2).

Email rules follow the UID2 Operator rather than the Python SDK: the Operator drops every space
in the local part (the SDK keeps inner ones), and the Operator is who publishers must agree with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from enum import IntEnum

from uid2_crypto.errors import InvalidIdentifierError


class IdentityType(IntEnum):
    EMAIL = 0
    PHONE = 1


class IdentityScope(IntEnum):
    UID2 = 0
    EUID = 1


_GMAIL = "gmail.com"
_UPPER_TO_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")

# Longer input is never a valid email, phone or hash. The operator and the publisher (which
# hashes locally and sends only the hash) refuse it alike, before normalising or hashing it.
MAX_DII_CHARS = 1024
_INVALID_REASON = {
    "email": "INVALID_EMAIL",
    "phone": "INVALID_PHONE",
    "email_hash": "INVALID_EMAIL_HASH",
    "phone_hash": "INVALID_PHONE_HASH",
}


def normalize_email(s: str) -> str:
    """Return the Operator's normal form of an email address, or raise InvalidIdentifierError."""
    try:
        # A string that cannot be UTF-8 encoded (lone surrogates) can never be hashed.
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidIdentifierError("INVALID_EMAIL") from None
    at = s.find("@")
    if at < 0 or s.find("@", at + 1) >= 0:
        raise InvalidIdentifierError("INVALID_EMAIL")
    local = s[:at].translate(_UPPER_TO_LOWER).replace(" ", "")
    # Leading spaces of the domain are kept, as the Operator does; only the tail is trimmed.
    domain = s[at + 1 :].translate(_UPPER_TO_LOWER).rstrip(" ")
    if not domain:
        raise InvalidIdentifierError("INVALID_EMAIL")
    if domain == _GMAIL:
        local = local.split("+", 1)[0].replace(".", "")
    if not local:
        raise InvalidIdentifierError("INVALID_EMAIL")
    return local + "@" + domain


def normalize_phone(s: str) -> str:
    """Check that ``s`` is E.164 (``+`` and 10 to 15 ASCII digits) and return it unchanged."""
    if len(s) < 11 or len(s) > 16 or s[0] != "+" or not all(c in _ASCII_DIGITS for c in s[1:]):
        raise InvalidIdentifierError("INVALID_PHONE")
    return s


def sha256_b64(normalised: str) -> str:
    """The 44-character ``email_hash`` / ``phone_hash`` of an already normalised DII."""
    return base64.b64encode(hashlib.sha256(normalised.encode("utf-8")).digest()).decode("ascii")


def parse_hash(s: str, identity_type: IdentityType) -> bytes:
    """Decode a publisher-supplied hash: 44-char standard base64 or 64 hex characters."""
    reason = "INVALID_EMAIL_HASH" if identity_type == IdentityType.EMAIL else "INVALID_PHONE_HASH"
    if len(s) == 64 and all(c in _HEX for c in s):
        return bytes.fromhex(s)
    if len(s) == 44:
        try:
            raw = binascii.a2b_base64(s, strict_mode=True)
        except (ValueError, UnicodeEncodeError):
            raise InvalidIdentifierError(reason) from None
        # Reject non-canonical encodings (stray low bits) so one hash has one spelling.
        if len(raw) == 32 and base64.b64encode(raw).decode("ascii") == s:
            return raw
    raise InvalidIdentifierError(reason)


def identity_hash(kind: str, value: str) -> tuple[IdentityType, bytes]:
    """The identity type and SHA-256 of the normalised DII, for any of the four input kinds.
    Input longer than MAX_DII_CHARS is invalid for its kind."""
    reason = _INVALID_REASON.get(kind)
    if reason is None:
        raise ValueError("unknown identity kind")
    if len(value) > MAX_DII_CHARS:
        raise InvalidIdentifierError(reason)
    if kind == "email":
        return IdentityType.EMAIL, hashlib.sha256(normalize_email(value).encode("utf-8")).digest()
    if kind == "phone":
        return IdentityType.PHONE, hashlib.sha256(normalize_phone(value).encode("utf-8")).digest()
    if kind == "email_hash":
        return IdentityType.EMAIL, parse_hash(value, IdentityType.EMAIL)
    return IdentityType.PHONE, parse_hash(value, IdentityType.PHONE)
