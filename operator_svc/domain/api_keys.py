"""The API key format, shared by the admin CLI that issues keys and the authenticator that checks
them: `UID2-C-<key_id>-<secret>`, stored only as a salted SHA-256."""

from __future__ import annotations

import hashlib

API_KEY_PREFIX = "UID2-C-"


def hash_api_key(salt: bytes, api_key: str) -> bytes:
    return hashlib.sha256(salt + api_key.encode("utf-8")).digest()


def api_key_id(api_key: str) -> str | None:
    """The public lookup prefix of an API key `UID2-C-<key_id>-<secret>`, or None."""
    if not api_key.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, rest = api_key[len(API_KEY_PREFIX) :].partition("-")
    if not sep or not key_id or not rest or len(key_id) > 32:
        return None
    return key_id
