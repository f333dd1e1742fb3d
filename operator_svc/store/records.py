"""Plain rows the store reads and writes. Domain code turns them into snapshots."""

from __future__ import annotations

from dataclasses import dataclass


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
    secret: bytes


@dataclass(frozen=True)
class ClientRow:
    client_id: int
    key_id: str
    name: str
    site_id: int
    roles: tuple[str, ...]
    key_salt: bytes
    key_hash: bytes
    secret: str
    disabled: bool
    created_ms: int


@dataclass(frozen=True)
class OptOutRow:
    seq: int
    flh: bytes
    opted_out_at_ms: int
