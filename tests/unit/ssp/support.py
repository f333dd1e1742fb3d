"""Real keys and tokens for SSP/DSP tests, made with uid2_crypto (no mocks)."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from bidstream.decryptor.optouts import OptOutSet
from svc_common.clock import Clock, ManualClock, SystemClock
from uid2.operator.v1 import operator_pb2
from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.keys import MASTER_KEYSET_ID, Key, key_container_json
from uid2_crypto.tokens import (
    PRIVACY_BIT_CLIENT_SIDE_GENERATED,
    TokenPayload,
    encode_advertising_token_v4,
)

SITE_ID = 42
SITE_KEYSET = 10
DOMAIN = "news.example.com"
APP = "com.example.news"
DAY_S = 86_400
# The unit tests' "now" (2026-09-21T14:13:20Z): their keys, tokens and checks read one hand-moved
# clock, so no verdict hangs on how long a test takes. Tests against real servers use the wall
# clock the servers read.
FIXED_NOW_MS = 1_790_000_000_000


def fixed_clock() -> ManualClock:
    return ManualClock(FIXED_NOW_MS)


def now_s() -> int:
    return SystemClock().now_ms() // 1000


def make_key(
    key_id: int, keyset_id: int, site_id: int, *, now: int, activates: int | None = None
) -> Key:
    """A key made at `now` (seconds), active an hour before it, for 30 days after it."""
    t = now
    return Key(
        id=key_id,
        keyset_id=keyset_id,
        site_id=site_id,
        created=t - 3600,
        activates=t - 3600 if activates is None else activates,
        expires=t + 30 * DAY_S,
        secret=os.urandom(32),
    )


@dataclass
class KeySet:
    """A master key and a site key (site 42), growing as keys rotate; made, and its tokens
    minted, at `clock`'s time."""

    clock: Clock = field(default_factory=SystemClock)
    master: Key = field(init=False)
    site: Key = field(init=False)
    extra: list[Key] = field(default_factory=list)
    # Domains the site registered besides DOMAIN (`site add --domain` while decryptors run).
    more_domains: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.master = make_key(101, MASTER_KEYSET_ID, 0, now=self.now_s())
        self.site = make_key(201, SITE_KEYSET, SITE_ID, now=self.now_s())

    def now_s(self) -> int:
        return self.clock.now_ms() // 1000

    def all_keys(self) -> list[Key]:
        return [self.master, self.site, *self.extra]

    def body(self) -> dict[str, Any]:
        return key_container_json(
            caller_site_id=7,
            default_keyset_id=SITE_KEYSET,
            keys=self.all_keys(),
            site_data=[(SITE_ID, [DOMAIN, *self.more_domains], [APP])],
            max_bidstream_lifetime_seconds=3 * DAY_S,
            max_sharing_lifetime_seconds=30 * DAY_S,
        )

    def container_proto(self) -> operator_pb2.KeyContainer:
        return json_format.ParseDict(self.body(), operator_pb2.KeyContainer())

    def rotate_site_key(self, key_id: int) -> Key:
        """A new site key, active now; tokens minted with it name a key decryptors lack."""
        new = make_key(key_id, SITE_KEYSET, SITE_ID, now=self.now_s())
        self.extra.append(self.site)  # the old key stays published
        self.site = new
        return new


def raw_uid(n: int = 1) -> bytes:
    return bytes([n]) * 32


def raw_uid_b64(n: int = 1) -> str:
    return base64.b64encode(raw_uid(n)).decode()


def mint(
    keys: KeySet,
    *,
    uid: int = 1,
    expires_in_s: int = 3 * DAY_S,
    created_ago_s: int = 60,
    client_side: bool = False,
    site_key: Key | None = None,
) -> str:
    t_ms = keys.now_s() * 1000
    created = t_ms - created_ago_s * 1000
    payload = TokenPayload(
        raw_uid=raw_uid(uid),
        identity_type=IdentityType.EMAIL,
        identity_scope=IdentityScope.UID2,
        site_id=SITE_ID,
        publisher_id=0,
        client_key_id=0,
        privacy_bits=PRIVACY_BIT_CLIENT_SIDE_GENERATED if client_side else 0,
        established_ms=created,
        refreshed_ms=created,
        created_ms=created,
        expires_ms=created + expires_in_s * 1000,
    )
    return encode_advertising_token_v4(payload, keys.master, site_key or keys.site, os.urandom)


def loaded_optouts() -> OptOutSet:
    """An opt-out set whose operator backlog is in (as a running decryptor's soon is)."""
    optouts = OptOutSet()
    optouts.loaded.set()
    return optouts
