"""Minting tokens with chosen times for status and boundary tests."""

from __future__ import annotations

import os

from tests.unit.crypto.vectors import master_key, site_key
from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.tokens import TokenPayload, encode_advertising_token_v4

BASE_MS = 1_800_000_000_000
RAW_UID = bytes(range(32))


def payload(
    *,
    created_ms: int = BASE_MS,
    expires_ms: int = BASE_MS + 3 * 86_400_000,
    privacy_bits: int = 0,
    site_id: int = 9000,
    raw_uid: bytes = RAW_UID,
    identity_type: IdentityType = IdentityType.EMAIL,
    identity_scope: IdentityScope = IdentityScope.UID2,
) -> TokenPayload:
    return TokenPayload(
        raw_uid=raw_uid,
        identity_type=identity_type,
        identity_scope=identity_scope,
        site_id=site_id,
        publisher_id=77,
        client_key_id=5,
        privacy_bits=privacy_bits,
        established_ms=created_ms - 3_600_000,
        refreshed_ms=created_ms,
        created_ms=created_ms,
        expires_ms=expires_ms,
        operator_site_id=1,
        operator_version=3,
        operator_key_id=4,
    )


def mint(**kw: object) -> str:
    return encode_advertising_token_v4(payload(**kw), master_key(), site_key(), os.urandom)  # type: ignore[arg-type]  # deliberately wrong or loosely typed fields
