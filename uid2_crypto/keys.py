"""Encryption keys, keysets, who may receive which key, and the key-container JSON (reference §5).

Key times are epoch **seconds** (as in the key JSON); token times are milliseconds.
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from uid2_crypto.errors import KeyContainerError
from uid2_crypto.identity import IdentityScope

MASTER_KEYSET_ID = -1
REFRESH_KEYSET_ID = -2
# The master keyset's id as the SDKs see it (the Operator's internal id is -1).
PUBLISHED_MASTER_KEYSET_ID = 9999999
# The keyset of a key published without its keyset id (another participant's key: for
# decryption only, see PublishedKeys): never a real keyset, so no lookup by keyset finds it.
DECRYPT_ONLY_KEYSET_ID = -3
FALLBACK_SITE_ID = 2
# Site ids are signed 32-bit in tokens (v4 payload) and in every proto that carries one.
MAX_SITE_ID = 2**31 - 1
SECRET_BYTES = 32
ID_READER_ROLE = "ID_READER"


@dataclass(frozen=True)
class Key:
    id: int
    keyset_id: int
    site_id: int
    created: int
    activates: int
    expires: int
    secret: bytes = field(repr=False)
    # Built once per key: constructing AESGCM costs more than a small decrypt.
    aead: AESGCM = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_BYTES:
            raise ValueError("key secret must be 32 bytes")
        object.__setattr__(self, "aead", AESGCM(self.secret))

    def is_active(self, now_s: int) -> bool:
        return self.activates <= now_s < self.expires


@dataclass(frozen=True)
class Keyset:
    keyset_id: int
    site_id: int
    name: str
    allowed_sites: frozenset[int] | None
    enabled: bool = True
    is_default: bool = False


def _order(k: Key) -> tuple[int, int]:
    return (k.activates, k.id)


class KeyRing:
    """An immutable set of keys indexed by id and by keyset."""

    __slots__ = ("_by_id", "_by_keyset", "_keys")

    def __init__(self, keys: Iterable[Key]) -> None:
        by_id: dict[int, Key] = {}
        for k in keys:
            by_id[k.id] = k
        self._keys = tuple(sorted(by_id.values(), key=_order))
        by_keyset: dict[int, list[Key]] = {}
        for k in self._keys:
            by_keyset.setdefault(k.keyset_id, []).append(k)
        self._by_id = by_id
        self._by_keyset = {ks: tuple(v) for ks, v in by_keyset.items()}

    @property
    def keys(self) -> tuple[Key, ...]:
        """All keys, sorted by activation time then id."""
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def get(self, key_id: int) -> Key | None:
        return self._by_id.get(key_id)

    def keyset_keys(self, keyset_id: int) -> tuple[Key, ...]:
        return self._by_keyset.get(keyset_id, ())

    def active_until(self, keyset_id: int, now_s: int) -> int:
        """When the keyset will first have no active key (epoch seconds), given the keys it
        holds: the active key's expiry, carried on by each key already added that activates
        before the one in use expires. `now_s` when no key is active now."""
        until = now_s
        for k in self._by_keyset.get(keyset_id, ()):  # by activation time
            if k.activates > until:
                break  # a gap: no key is active from `until` to this one's activation
            until = max(until, k.expires)
        return until

    def active_key(self, keyset_id: int, now_s: int) -> Key | None:
        """The latest-activating key of the keyset with activates <= now < expires."""
        ks = self._by_keyset.get(keyset_id)
        if not ks:
            return None
        i = bisect_right(ks, now_s, key=lambda k: k.activates)
        while i > 0:
            i -= 1
            if now_s < ks[i].expires:
                return ks[i]
        return None


def keys_for_caller(
    keyring: KeyRing,
    keysets: Mapping[int, Keyset],
    caller_site_id: int,
    roles: frozenset[str],
    now_s: int,
) -> list[Key]:
    """The unexpired keys a caller may hold, sorted by activation (reference §5 access rules)."""
    is_reader = ID_READER_ROLE in roles
    allowed: dict[int, bool] = {}

    def may_read(keyset_id: int) -> bool:
        if keyset_id == MASTER_KEYSET_ID:
            return True
        if keyset_id == REFRESH_KEYSET_ID:
            return False
        ks = keysets.get(keyset_id)
        if ks is None or not ks.enabled:
            return False
        if ks.site_id == caller_site_id:
            return True
        if ks.allowed_sites is None:
            return is_reader
        return caller_site_id in ks.allowed_sites

    out: list[Key] = []
    for k in keyring.keys:
        if k.expires <= now_s:
            continue
        ok = allowed.get(k.keyset_id)
        if ok is None:
            ok = allowed[k.keyset_id] = may_read(k.keyset_id)
        if ok:
            out.append(k)
    return out


def published_keyset_id(keyset_id: int) -> int:
    """The keyset id a decryptor sees: the master keyset's internal -1 is published as 9999999."""
    return PUBLISHED_MASTER_KEYSET_ID if keyset_id == MASTER_KEYSET_ID else keyset_id


@dataclass(frozen=True)
class PublishedKeys:
    """What one key/sharing or key/bidstream answer publishes to a caller, before it is rendered:
    as the official JSON by `to_json` (the HTTP API, the SDKs) or as a proto by the operator's
    gRPC servicer. Keys are sorted by activation because the SDK's keyset lookup bisects
    without sorting; keyset ids stay internal (`published_keyset_id` maps the master's)."""

    caller_site_id: int
    default_keyset_id: int
    keys: tuple[Key, ...]
    site_data: tuple[tuple[int, tuple[str, ...], tuple[str, ...]], ...]
    max_bidstream_lifetime_seconds: int
    max_sharing_lifetime_seconds: int
    identity_scope: str = "UID2"
    token_expiry_seconds: int = 30 * 86400
    allow_clock_skew_seconds: int = 1800

    def __post_init__(self) -> None:
        if any(k.keyset_id == REFRESH_KEYSET_ID for k in self.keys):
            raise ValueError("refresh keys are never published")
        object.__setattr__(self, "keys", tuple(sorted(self.keys, key=_order)))

    def carries_keyset_id(self, key: Key) -> bool:
        """Whether `key` is published with its keyset id: master keys and the caller's own.
        Another participant's key is there to decrypt that participant's tokens; with its
        keyset id an SDK would also encrypt under it (SharingClient's keyset_id), minting tokens
        in another participant's name. The official operator leaves it out likewise."""
        return (
            key.keyset_id in (MASTER_KEYSET_ID, self.default_keyset_id)
            or key.site_id == self.caller_site_id
        )

    def to_json(self) -> dict[str, Any]:
        """The body of the answer, as the official SDKs parse it. Master keys carry no
        ``site_id`` (the SDK then assumes -1, as for the Operator's own JSON)."""
        rendered: list[dict[str, Any]] = []
        for k in self.keys:
            entry: dict[str, Any] = {"id": k.id}
            if self.carries_keyset_id(k):
                entry["keyset_id"] = published_keyset_id(k.keyset_id)
            if k.keyset_id != MASTER_KEYSET_ID:
                entry["site_id"] = k.site_id
            entry["created"] = k.created
            entry["activates"] = k.activates
            entry["expires"] = k.expires
            entry["secret"] = base64.b64encode(k.secret).decode("ascii")
            rendered.append(entry)
        return {
            "caller_site_id": self.caller_site_id,
            "master_keyset_id": PUBLISHED_MASTER_KEYSET_ID,
            "default_keyset_id": published_keyset_id(self.default_keyset_id),
            "token_expiry_seconds": self.token_expiry_seconds,
            "identity_scope": self.identity_scope,
            "allow_clock_skew_seconds": self.allow_clock_skew_seconds,
            "max_bidstream_lifetime_seconds": self.max_bidstream_lifetime_seconds,
            "max_sharing_lifetime_seconds": self.max_sharing_lifetime_seconds,
            "keys": rendered,
            "site_data": [
                {"id": sid, "domain_names": list(domains), "app_names": list(apps)}
                for sid, domains, apps in self.site_data
            ],
        }


def key_container_json(
    *,
    caller_site_id: int,
    default_keyset_id: int,
    keys: Sequence[Key],
    site_data: Sequence[tuple[int, Sequence[str], Sequence[str]]],
    identity_scope: str = "UID2",
    token_expiry_seconds: int = 30 * 86400,
    allow_clock_skew_seconds: int = 1800,
    max_bidstream_lifetime_seconds: int,
    max_sharing_lifetime_seconds: int,
) -> dict[str, Any]:
    """`PublishedKeys(...).to_json()`, for callers holding the parts (tests, benches)."""
    return PublishedKeys(
        caller_site_id=caller_site_id,
        default_keyset_id=default_keyset_id,
        keys=tuple(keys),
        site_data=tuple((sid, tuple(d), tuple(a)) for sid, d, a in site_data),
        identity_scope=identity_scope,
        token_expiry_seconds=token_expiry_seconds,
        allow_clock_skew_seconds=allow_clock_skew_seconds,
        max_bidstream_lifetime_seconds=max_bidstream_lifetime_seconds,
        max_sharing_lifetime_seconds=max_sharing_lifetime_seconds,
    ).to_json()


@dataclass(frozen=True)
class KeyContainer:
    """A parsed key container. Master keys are mapped back to MASTER_KEYSET_ID."""

    caller_site_id: int | None
    master_keyset_id: int
    default_keyset_id: int | None
    token_expiry_seconds: int | None
    identity_scope: IdentityScope
    allow_clock_skew_seconds: int
    max_bidstream_lifetime_seconds: int | None
    max_sharing_lifetime_seconds: int | None
    keyring: KeyRing
    site_data: Mapping[int, tuple[tuple[str, ...], tuple[str, ...]]]


def _opt_int(body: Mapping[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise KeyContainerError("key container field has the wrong type")
    return v


def _req_int(d: Mapping[str, Any], name: str) -> int:
    v = _opt_int(d, name)
    if v is None:
        raise KeyContainerError("key container entry lacks a required field")
    return v


def _names(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise KeyContainerError("site_data names must be lists of strings")
    return tuple(v)


def parse_key_container_json(body: Mapping[str, Any]) -> KeyContainer:
    """Parse the ``body`` of a key answer (ours or the Operator's); raises KeyContainerError."""
    if not isinstance(body, Mapping):
        raise KeyContainerError("key container body must be an object")
    published_master = _opt_int(body, "master_keyset_id")
    if published_master is None:
        published_master = PUBLISHED_MASTER_KEYSET_ID

    def internal(keyset_id: int) -> int:
        return MASTER_KEYSET_ID if keyset_id == published_master else keyset_id

    raw_keys = body.get("keys")
    if not isinstance(raw_keys, list):
        raise KeyContainerError("key container lacks a keys list")
    keysets_published = any(isinstance(e, Mapping) and "keyset_id" in e for e in raw_keys)
    keys: list[Key] = []
    for entry in raw_keys:
        if not isinstance(entry, Mapping):
            raise KeyContainerError("key entry must be an object")
        site_id = _opt_int(entry, "site_id")
        site_id = -1 if site_id is None else site_id
        keyset_id = _opt_int(entry, "keyset_id")
        if keyset_id is None and keysets_published:
            keyset_id = DECRYPT_ONLY_KEYSET_ID  # another participant's key
        elif keyset_id is None:
            # Keyset-less (older) JSON marks master keys by site -1.
            keyset_id = MASTER_KEYSET_ID if site_id == -1 else site_id
        secret_b64 = entry.get("secret")
        if not isinstance(secret_b64, str):
            raise KeyContainerError("key entry lacks a secret")
        try:
            secret = binascii.a2b_base64(secret_b64, strict_mode=True)
            keys.append(
                Key(
                    id=_req_int(entry, "id"),
                    keyset_id=internal(keyset_id),
                    site_id=site_id,
                    created=_req_int(entry, "created"),
                    activates=_req_int(entry, "activates"),
                    expires=_req_int(entry, "expires"),
                    secret=secret,
                )
            )
        except KeyContainerError:
            raise
        except ValueError:
            raise KeyContainerError("key entry has a malformed secret") from None

    scope_name = body.get("identity_scope", "UID2")
    if scope_name not in ("UID2", "EUID"):
        raise KeyContainerError("unknown identity scope")
    default_keyset = _opt_int(body, "default_keyset_id")

    site_data: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    raw_sites = body.get("site_data") or []
    if not isinstance(raw_sites, list):
        raise KeyContainerError("site_data must be a list")
    for site in raw_sites:
        if not isinstance(site, Mapping):
            raise KeyContainerError("site_data entry must be an object")
        site_data[_req_int(site, "id")] = (
            _names(site.get("domain_names")),
            _names(site.get("app_names")),
        )

    skew = _opt_int(body, "allow_clock_skew_seconds")
    return KeyContainer(
        caller_site_id=_opt_int(body, "caller_site_id"),
        master_keyset_id=MASTER_KEYSET_ID,
        default_keyset_id=None if default_keyset is None else internal(default_keyset),
        token_expiry_seconds=_opt_int(body, "token_expiry_seconds"),
        identity_scope=IdentityScope[scope_name],
        allow_clock_skew_seconds=1800 if skew is None else skew,
        max_bidstream_lifetime_seconds=_opt_int(body, "max_bidstream_lifetime_seconds"),
        max_sharing_lifetime_seconds=_opt_int(body, "max_sharing_lifetime_seconds"),
        keyring=KeyRing(keys),
        site_data=MappingProxyType(site_data),
    )
