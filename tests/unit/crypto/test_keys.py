import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.crypto.vectors import VECTORS, container
from uid2_crypto.errors import KeyContainerError
from uid2_crypto.identity import IdentityScope
from uid2_crypto.keys import (
    MASTER_KEYSET_ID,
    PUBLISHED_MASTER_KEYSET_ID,
    REFRESH_KEYSET_ID,
    Key,
    KeyRing,
    Keyset,
    key_container_json,
    keys_for_caller,
    parse_key_container_json,
)


def mk(key_id: int, keyset_id: int, site_id: int, activates: int, expires: int) -> Key:
    return Key(key_id, keyset_id, site_id, activates - 10, activates, expires, bytes([key_id]) * 32)


def found(key: Key | None) -> Key:
    """The key a lookup must have found (a None fails the test here)."""
    assert key is not None
    return key


def test_key_secret_hidden_and_aead_cached() -> None:
    k = mk(1, 5, 7, 100, 200)
    assert "secret" not in repr(k) and "aead" not in repr(k)
    assert k.aead is k.aead
    assert k == mk(1, 5, 7, 100, 200)
    assert hash(k) == hash(mk(1, 5, 7, 100, 200))
    with pytest.raises(ValueError):
        Key(1, 1, 1, 0, 0, 1, b"short")


def test_active_key_is_latest_activating_unexpired() -> None:
    ring = KeyRing(
        [
            mk(3, 10, 7, 300, 1000),  # future until 300
            mk(1, 10, 7, 100, 1000),
            mk(2, 10, 7, 200, 250),  # newer but short-lived
            mk(4, 11, 8, 100, 1000),
        ]
    )
    assert [k.id for k in ring.keys] == [1, 4, 2, 3]
    assert ring.active_key(10, 99) is None
    assert found(ring.active_key(10, 100)).id == 1
    assert found(ring.active_key(10, 200)).id == 2
    assert found(ring.active_key(10, 250)).id == 1  # key 2 expired; fall back to the older one
    assert found(ring.active_key(10, 300)).id == 3
    assert ring.active_key(10, 1000) is None
    assert ring.active_key(99, 500) is None
    assert found(ring.get(4)).site_id == 8 and ring.get(5) is None
    assert len(ring) == 4 and 3 in ring


def test_active_until_follows_successors_that_take_over_in_time() -> None:
    ring = KeyRing(
        [
            mk(1, 10, 7, 100, 500),
            mk(2, 10, 7, 400, 900),  # activates before key 1 expires: carries on
            mk(3, 10, 7, 950, 2000),  # after a gap (900-950): no key then
            mk(4, 11, 8, 100, 300),
        ]
    )
    assert ring.active_until(10, 100) == 900
    assert ring.active_until(10, 600) == 900
    assert ring.active_until(10, 899) == 900
    assert ring.active_until(10, 920) == 920  # none active now
    assert ring.active_until(10, 960) == 2000
    assert ring.active_until(10, 50) == 50  # not active yet
    assert ring.active_until(11, 100) == 300
    assert ring.active_until(99, 100) == 100
    # Touching, not overlapping: key 6 activates the second key 5 expires.
    assert KeyRing([mk(5, 10, 7, 0, 10), mk(6, 10, 7, 10, 20)]).active_until(10, 5) == 20


def test_access_rules() -> None:
    now = 500
    ring = KeyRing(
        [
            mk(1, MASTER_KEYSET_ID, -1, 100, 1000),
            mk(2, REFRESH_KEYSET_ID, -2, 100, 1000),
            mk(3, 20, 7, 300, 1000),  # caller's own keyset
            mk(4, 30, 8, 100, 1000),  # allowed list with 7
            mk(5, 40, 9, 100, 1000),  # allowed list without 7
            mk(6, 50, 10, 100, 1000),  # no list: ID_READER only
            mk(7, 20, 7, 100, 400),  # expired
            mk(8, 60, 11, 100, 1000),  # disabled keyset
            mk(9, 70, 12, 200, 1000),  # keyset unknown
        ]
    )
    keysets = {
        20: Keyset(20, 7, "own", frozenset()),
        30: Keyset(30, 8, "shares", frozenset({7, 99})),
        40: Keyset(40, 9, "private", frozenset({98})),
        50: Keyset(50, 10, "public", None),
        60: Keyset(60, 11, "off", None, enabled=False),
    }
    plain = keys_for_caller(ring, keysets, 7, frozenset({"SHARER"}), now)
    assert [k.id for k in plain] == [1, 4, 3]
    reader = keys_for_caller(ring, keysets, 7, frozenset({"ID_READER"}), now)
    assert [k.id for k in reader] == [1, 4, 6, 3]
    assert [k.activates for k in reader] == sorted(k.activates for k in reader)
    # A key is unexpired while now < expires: at its expiry second it is no longer published.
    at_expiry = keys_for_caller(ring, keysets, 7, frozenset({"SHARER"}), 400)
    assert 7 not in [k.id for k in at_expiry]
    assert 7 in [k.id for k in keys_for_caller(ring, keysets, 7, frozenset({"SHARER"}), 399)]


def test_key_container_json_shape_and_round_trip() -> None:
    ring = KeyRing(
        [
            mk(12, 99999, 9000, 300, 10_000),
            mk(11, MASTER_KEYSET_ID, -1, 200, 10_000),
            mk(10, 99999, 9000, 100, 10_000),
        ]
    )
    body = key_container_json(
        caller_site_id=9000,
        default_keyset_id=99999,
        keys=list(reversed(ring.keys)),
        site_data=[(9000, ["example.com"], ["com.example.app"])],
        max_bidstream_lifetime_seconds=3 * 86400,
        max_sharing_lifetime_seconds=30 * 86400,
    )
    json.dumps(body)  # plain JSON types
    assert body["master_keyset_id"] == PUBLISHED_MASTER_KEYSET_ID
    assert [k["id"] for k in body["keys"]] == [10, 11, 12]
    master = body["keys"][1]
    assert master["keyset_id"] == PUBLISHED_MASTER_KEYSET_ID and "site_id" not in master
    assert body["keys"][0]["site_id"] == 9000
    assert base64.b64decode(body["keys"][0]["secret"]) == bytes([10]) * 32
    assert body["site_data"] == [
        {"id": 9000, "domain_names": ["example.com"], "app_names": ["com.example.app"]}
    ]
    c = parse_key_container_json(body)
    assert c.master_keyset_id == MASTER_KEYSET_ID
    assert c.keyring.keys == ring.keys
    assert found(c.keyring.get(11)).keyset_id == MASTER_KEYSET_ID
    assert c.site_data[9000] == (("example.com",), ("com.example.app",))
    assert c.max_bidstream_lifetime_seconds == 3 * 86400
    assert c.identity_scope is IdentityScope.UID2


def test_refresh_keys_never_published() -> None:
    with pytest.raises(ValueError):
        key_container_json(
            caller_site_id=1,
            default_keyset_id=1,
            keys=[mk(1, REFRESH_KEYSET_ID, -2, 1, 2)],
            site_data=[],
            max_bidstream_lifetime_seconds=1,
            max_sharing_lifetime_seconds=1,
        )


def test_parses_the_vector_containers() -> None:
    c = container()
    assert c.caller_site_id == 9000 and c.default_keyset_id == 99999
    assert found(c.keyring.get(164)).keyset_id == MASTER_KEYSET_ID  # published as 1 there
    assert found(c.keyring.get(164)).site_id == -1
    assert c.max_bidstream_lifetime_seconds is None
    assert container("EUID").identity_scope is IdentityScope.EUID


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.pop("keys"),
        lambda b: b["keys"][0].pop("secret"),
        lambda b: b["keys"][0].update(secret="not base64!"),
        lambda b: b["keys"][0].update(secret="AAAA"),
        lambda b: b["keys"][0].update(id="164"),
        lambda b: b["keys"][0].pop("expires"),
        lambda b: b.update(identity_scope="MARS"),
        lambda b: b.update(site_data=[{"id": 1, "domain_names": "x.com"}]),
    ],
)
def test_malformed_container_raises_key_container_error(
    mutate: Callable[[dict[str, Any]], object],
) -> None:
    body = json.loads(json.dumps(VECTORS["key_json_uid2"]["body"]))
    mutate(body)
    with pytest.raises(KeyContainerError):
        parse_key_container_json(body)
