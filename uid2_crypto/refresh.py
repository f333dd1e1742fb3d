"""The Operator's refresh token: opaque to everyone else, exactly 388 characters.

Layout (integers big-endian, times epoch ms)::

    header(5)  = scope byte ‖ refresh key id(4),  scope byte = scope<<4 | type<<2
    wrapper    = standard base64 of  header ‖ nonce(12) ‖ AES-256-GCM(refresh key, aad=header) of
                 {"refresh_response_key":"<b64 of 32 random bytes>","refresh_token":"<inner>"}
                 (compact JSON, 258 bytes)                         → 291 bytes → 388 characters
    inner      = base64url, no padding, of
                 prefix(1) = scope byte ‖ version(1) = 112 ‖ refresh key id(4) ‖ nonce(12)
                 ‖ AES-256-GCM(refresh key, aad=first 6 bytes) of the 92-byte payload ‖ tag(16)
                                                                   → 126 bytes → 168 characters
    payload    = expires(8) ‖ created(8) ‖ operator site id(4) ‖ site id(4) ‖ publisher id(8)
                 ‖ client key id(4) ‖ privacy bits(4) ‖ established(8) ‖ identity type(1)
                 ‖ identity scope(1) ‖ first-level hash(32) ‖ reserved, zero(10)

The headers are authenticated as AAD so a flipped scope or key id fails the tag. Only keys of the
refresh keyset decrypt refresh tokens; the caller checks expiry against its own clock.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from cryptography.exceptions import InvalidTag

from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.keys import REFRESH_KEYSET_ID, Key, KeyRing

REFRESH_TOKEN_LENGTH = 388
REFRESH_TOKEN_VERSION = 112
_NONCE = 12
_TAG = 16
_RESPONSE_KEY_BYTES = 32
_HEADER = struct.Struct(">BI")
_INNER_HEADER = struct.Struct(">BBI")
_PAYLOAD = struct.Struct(">QQIIQIIQBB32s10x")
_INNER_BYTES = _INNER_HEADER.size + _NONCE + _PAYLOAD.size + _TAG
_JSON_HEAD = b'{"refresh_response_key":"'
_JSON_MID = b'","refresh_token":"'
_JSON_TAIL = b'"}'
_KEY_B64_LEN = 44
_INNER_B64_LEN = _INNER_BYTES * 4 // 3
_JSON_LEN = len(_JSON_HEAD) + _KEY_B64_LEN + len(_JSON_MID) + _INNER_B64_LEN + len(_JSON_TAIL)
_WRAPPER_BYTES = _HEADER.size + _NONCE + _JSON_LEN + _TAG
if _INNER_BYTES % 3 or _WRAPPER_BYTES % 3 or _WRAPPER_BYTES * 4 // 3 != REFRESH_TOKEN_LENGTH:
    raise RuntimeError("refresh token layout must add up to 388 unpadded characters")
_MID_AT = len(_JSON_HEAD) + _KEY_B64_LEN
_INNER_AT = _MID_AT + len(_JSON_MID)


class RefreshDecodeStatus(Enum):
    OK = "ok"
    INVALID = "invalid"


@dataclass(frozen=True)
class RefreshPayload:
    expires_ms: int
    created_ms: int
    operator_site_id: int
    site_id: int
    publisher_id: int
    client_key_id: int
    privacy_bits: int
    established_ms: int
    identity_type: IdentityType
    identity_scope: IdentityScope
    # Kept out of repr: the first-level hash is the durable key of a user's opt-out record.
    first_level_hash: bytes = field(repr=False)


def _scope_byte(scope: IdentityScope, identity_type: IdentityType) -> int:
    return (int(scope) << 4) | (int(identity_type) << 2)


def encode_refresh_token(
    payload: RefreshPayload, refresh_key: Key, rng: Callable[[int], bytes]
) -> tuple[str, str]:
    """(refresh token, refresh_response_key as base64). rng draws: response key, inner, outer."""
    if refresh_key.keyset_id != REFRESH_KEYSET_ID:
        raise ValueError("refresh tokens need a key of the refresh keyset")
    if len(payload.first_level_hash) != 32:
        raise ValueError("first-level hash must be 32 bytes")
    response_key = rng(_RESPONSE_KEY_BYTES)
    inner_nonce = rng(_NONCE)
    outer_nonce = rng(_NONCE)
    if (
        len(response_key) != _RESPONSE_KEY_BYTES
        or len(inner_nonce) != _NONCE
        or len(outer_nonce) != _NONCE
    ):
        raise ValueError("rng returned the wrong number of bytes")
    scope_byte = _scope_byte(payload.identity_scope, payload.identity_type)
    plain = _PAYLOAD.pack(
        payload.expires_ms,
        payload.created_ms,
        payload.operator_site_id,
        payload.site_id,
        payload.publisher_id,
        payload.client_key_id,
        payload.privacy_bits,
        payload.established_ms,
        int(payload.identity_type),
        int(payload.identity_scope),
        payload.first_level_hash,
    )
    inner_header = _INNER_HEADER.pack(scope_byte, REFRESH_TOKEN_VERSION, refresh_key.id)
    inner = inner_header + inner_nonce + refresh_key.aead.encrypt(inner_nonce, plain, inner_header)
    response_key_b64 = base64.b64encode(response_key)
    body = _JSON_HEAD + response_key_b64 + _JSON_MID + base64.urlsafe_b64encode(inner) + _JSON_TAIL
    header = _HEADER.pack(scope_byte, refresh_key.id)
    wrapper = header + outer_nonce + refresh_key.aead.encrypt(outer_nonce, body, header)
    return base64.b64encode(wrapper).decode("ascii"), response_key_b64.decode("ascii")


_INVALID: tuple[RefreshDecodeStatus, RefreshPayload | None, str | None] = (
    RefreshDecodeStatus.INVALID,
    None,
    None,
)


def decode_refresh_token(
    token: str, keyring: KeyRing
) -> tuple[RefreshDecodeStatus, RefreshPayload | None, str | None]:
    """(OK, payload, refresh_response_key) or (INVALID, None, None); never raises."""
    try:
        return _decode(token, keyring)
    except Exception:
        return _INVALID


def _decode(
    token: str, keyring: KeyRing
) -> tuple[RefreshDecodeStatus, RefreshPayload | None, str | None]:
    if not isinstance(token, str) or len(token) != REFRESH_TOKEN_LENGTH:
        return _INVALID
    try:
        wrapper = binascii.a2b_base64(token.encode("ascii"), strict_mode=True)
    except ValueError:
        return _INVALID
    if len(wrapper) != _WRAPPER_BYTES:
        return _INVALID
    scope_byte, key_id = _HEADER.unpack_from(wrapper)
    key = keyring.get(key_id)
    if key is None or key.keyset_id != REFRESH_KEYSET_ID:
        return _INVALID
    header = wrapper[: _HEADER.size]
    nonce_end = _HEADER.size + _NONCE
    try:
        body = key.aead.decrypt(wrapper[_HEADER.size : nonce_end], wrapper[nonce_end:], header)
    except InvalidTag:
        return _INVALID
    if (
        len(body) != _JSON_LEN
        or not body.startswith(_JSON_HEAD)
        or body[_MID_AT:_INNER_AT] != _JSON_MID
        or not body.endswith(_JSON_TAIL)
    ):
        return _INVALID
    response_key_b64 = body[len(_JSON_HEAD) : _MID_AT]
    inner = base64.urlsafe_b64decode(body[_INNER_AT : _INNER_AT + _INNER_B64_LEN])
    if (
        len(binascii.a2b_base64(response_key_b64, strict_mode=True)) != _RESPONSE_KEY_BYTES
        or len(inner) != _INNER_BYTES
    ):
        return _INVALID
    prefix, version, inner_key_id = _INNER_HEADER.unpack_from(inner)
    if prefix != scope_byte or version != REFRESH_TOKEN_VERSION or inner_key_id != key_id:
        return _INVALID
    hl = _INNER_HEADER.size
    try:
        plain = key.aead.decrypt(inner[hl : hl + _NONCE], inner[hl + _NONCE :], inner[:hl])
    except InvalidTag:
        return _INVALID
    fields = _PAYLOAD.unpack(plain)
    # Reserved bytes are skipped by the struct; insist they are zero so they stay usable.
    if plain[-10:] != bytes(10) or fields[8] > 1 or fields[9] > 1:
        return _INVALID
    identity_type = IdentityType(fields[8])
    scope = IdentityScope(fields[9])
    if _scope_byte(scope, identity_type) != scope_byte:
        return _INVALID
    payload = RefreshPayload(
        expires_ms=fields[0],
        created_ms=fields[1],
        operator_site_id=fields[2],
        site_id=fields[3],
        publisher_id=fields[4],
        client_key_id=fields[5],
        privacy_bits=fields[6],
        established_ms=fields[7],
        identity_type=identity_type,
        identity_scope=scope,
        first_level_hash=fields[10],
    )
    return RefreshDecodeStatus.OK, payload, response_key_b64.decode("ascii")
