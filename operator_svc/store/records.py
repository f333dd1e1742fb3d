"""Plain rows the store reads and writes. Domain code turns them into snapshots.

Key secrets, API-key salts and hashes, client secrets and first-level hashes are kept out of
repr, so a row in a log line or a traceback never carries them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SiteRow:
    site_id: int
    name: str
    domains: tuple[str, ...]
    app_names: tuple[str, ...]


@dataclass(frozen=True)
class KeysetRow:
    keyset_id: int
    site_id: int
    name: str
    allowed_sites: tuple[int, ...] | None
    enabled: bool
    is_default: bool


@dataclass(frozen=True)
class KeyRow:
    key_id: int
    keyset_id: int
    site_id: int
    created_s: int
    activates_s: int
    expires_s: int
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class ClientRow:
    client_id: int
    key_id: str
    name: str
    site_id: int
    roles: tuple[str, ...]
    key_salt: bytes = field(repr=False)
    key_hash: bytes = field(repr=False)
    secret: str = field(repr=False)
    disabled: bool
    created_ms: int


@dataclass(frozen=True)
class OptOutRow:
    seq: int
    flh: bytes = field(repr=False)
    opted_out_at_ms: int


@dataclass(frozen=True)
class KeypairRow:
    """A client-side token generation subscription: the page's public key is derived from the
    private one, which never leaves the operator."""

    subscription_id: str
    site_id: int
    private_key: bytes = field(repr=False)
    disabled: bool
    created_ms: int
