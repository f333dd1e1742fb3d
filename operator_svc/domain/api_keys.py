"""The API key format, shared by the admin CLI that issues keys and the authenticator that checks
them: `UID2-C-<key_id>-<secret>` (`EUID-C-` in an EUID store, as the official operators issue),
stored only as a salted SHA-256."""

from __future__ import annotations

import hashlib

# Either is accepted whatever the store's scope: the key's hash, not its prefix, decides.
_PREFIXES = ("UID2-C-", "EUID-C-")


def api_key_prefix(identity_scope: str) -> str:
    """What a new key of a store of `identity_scope` ("UID2" or "EUID") starts with."""
    return f"{identity_scope}-C-"


def hash_api_key(salt: bytes, api_key: str) -> bytes:
    return hashlib.sha256(salt + api_key.encode("utf-8")).digest()


def api_key_id(api_key: str) -> str | None:
    """The public lookup prefix of an API key `UID2-C-<key_id>-<secret>`, or None."""
    if not api_key.startswith(_PREFIXES):
        return None
    key_id, sep, rest = api_key[len(_PREFIXES[0]) :].partition("-")
    if not sep or not key_id or not rest or len(key_id) > 32:
        return None
    return key_id
