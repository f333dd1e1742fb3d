from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from google.protobuf import json_format

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.domain.mapping import UnmappedReason
from operator_svc.servicer import key_container_proto
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.operator.conftest import T0, Env
from uid2.operator.v1 import operator_pb2
from uid2_crypto.keys import MASTER_KEYSET_ID, PUBLISHED_MASTER_KEYSET_ID, REFRESH_KEYSET_ID


def test_map_identity(env: Env) -> None:
    items = [
        ("email", "map@example.com"),
        ("phone", "bad"),
        ("", ""),
        ("email", "optout@example.com"),
    ]
    out = env.op.mapper.map_identity(env.client("mapper"), items)
    assert len(out) == 4
    assert len(base64.b64decode(out[0].raw_uid)) == 32 and out[0].bucket_id
    assert out[0].refresh_from > T0 and out[0].previous_raw_uid == ""
    assert out[1].unmapped is UnmappedReason.INVALID_IDENTIFIER
    assert out[2].unmapped is UnmappedReason.INVALID_IDENTIFIER
    assert out[3].unmapped is UnmappedReason.OPTOUT


def test_map_limits(env: Env) -> None:
    assert (
        len(env.op.mapper.map_identity(env.client("mapper"), [("email", "a@b.c")] * 5000)) == 5000
    )
    with pytest.raises(ServiceError) as exc:
        env.op.mapper.map_identity(env.client("mapper"), [("email", "a@b.c")] * 5001)
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == "TOO_MANY_ITEMS"
    with pytest.raises(ServiceError):
        env.op.mapper.map_identity(env.client("gen"), [])


def test_salt_rotation_previous_uid(env: Env) -> None:
    before = env.op.mapper.map_identity(env.client("mapper"), [("email", "rot@example.com")])[0]
    admin.rotate_salts(env.store, 1.0, T0 + 1000, os.urandom)
    assert "salts" in env.op.sync_now()
    env.clock.set(T0 + 2000)
    after = env.op.mapper.map_identity(env.client("mapper"), [("email", "rot@example.com")])[0]
    assert after.raw_uid != before.raw_uid and after.previous_raw_uid == before.raw_uid
    assert after.refresh_from > before.refresh_from or after.refresh_from >= T0 + 1000
    # buckets_since lists rotations strictly after `since`.
    mapper = env.client("mapper")
    assert env.op.mapper.buckets_since(mapper, T0 + 1000) == []
    rotated = env.op.mapper.buckets_since(mapper, T0 + 999)
    assert rotated and all(ts == T0 + 1000 for _, ts in rotated[:10])
    assert (after.bucket_id, T0 + 1000) in rotated
    with pytest.raises(ServiceError) as exc:
        env.op.mapper.buckets_since(mapper, -1)
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == "INVALID_SINCE"
    env.clock.set(T0 + 91 * 86_400_000)
    late = env.op.mapper.map_identity(env.client("mapper"), [("email", "rot@example.com")])[0]
    assert late.previous_raw_uid == ""


def test_key_access_rules(env: Env) -> None:
    ring = env.op.state.keys.keyring
    reader = env.op.keys.bidstream_keys(env.client("reader")).to_json()

    def keysets(container: dict[str, Any]) -> set[int]:  # internal keyset ids of its keys
        return {ring.get(k["id"]).keyset_id for k in container["keys"]}  # type: ignore[union-attr]  # a None fails the test here anyway

    ids = keysets(reader)
    assert MASTER_KEYSET_ID in ids
    assert env.op.state.keys.default_keyset[10] in ids  # unlisted keysets for ID_READER
    # Only master keys and the caller's own carry their keyset id: another site's key is for
    # decryption only (with its keyset id an SDK would encrypt under it).
    published = {k.get("keyset_id") for k in reader["keys"]}
    own = env.op.state.keys.default_keyset[30]  # the reader's site
    assert published == {PUBLISHED_MASTER_KEYSET_ID, own, None}
    assert all(ring.get(k["id"]).keyset_id != REFRESH_KEYSET_ID for k in reader["keys"])  # type: ignore[union-attr]  # a None fails the test here anyway
    assert [k["activates"] for k in reader["keys"]] == sorted(
        k["activates"] for k in reader["keys"]
    )
    sharer = env.op.keys.sharing_keys(env.client("sharer")).to_json()
    sharer_sets = {k.get("keyset_id") for k in sharer["keys"]}
    assert sharer_sets == {PUBLISHED_MASTER_KEYSET_ID, env.op.state.keys.default_keyset[40]}
    assert sharer["default_keyset_id"] == env.op.state.keys.default_keyset[40]
    assert reader["caller_site_id"] == 30 and reader["identity_scope"] == "UID2"
    assert any(s["id"] == 12 and s["domain_names"] == ["pub.example"] for s in reader["site_data"])
    for name, call in (("gen", env.op.keys.bidstream_keys), ("gen", env.op.keys.sharing_keys)):
        with pytest.raises(ServiceError) as exc:
            call(env.client(name))
        assert exc.value.kind is ErrorKind.PERMISSION_DENIED
    assert MASTER_KEYSET_ID not in published  # published as 9999999
    # ADMIN holds every role, ID_READER's access to unlisted keysets included.
    admin_sets = keysets(env.op.keys.bidstream_keys(env.client("admin")).to_json())
    assert env.op.state.keys.default_keyset[10] in admin_sets


def test_key_containers_state_their_token_expiry(env: Env) -> None:
    # Bid-stream tokens live token_lifetime_s; sharing tokens max_sharing_lifetime_s.
    cfg = OperatorConfig(data_dir=env.dir)
    assert cfg.token_lifetime_s != cfg.max_sharing_lifetime_s
    bid = env.op.keys.bidstream_keys(env.client("reader")).to_json()
    share = env.op.keys.sharing_keys(env.client("sharer")).to_json()
    assert bid["token_expiry_seconds"] == cfg.token_lifetime_s
    assert share["token_expiry_seconds"] == cfg.max_sharing_lifetime_s


def test_grpc_and_http_publish_the_same_key_container(env: Env) -> None:
    # One PublishedKeys, two renderings: the servicer's proto must carry exactly what the
    # official JSON carries (secrets as bytes, the master keyset as 9999999 with no site).
    for name, call in (
        ("reader", env.op.keys.bidstream_keys),
        ("sharer", env.op.keys.sharing_keys),
    ):
        published = call(env.client(name))
        proto = key_container_proto(published)
        assert proto == json_format.ParseDict(published.to_json(), operator_pb2.KeyContainer())
        assert len(proto.keys) == len(published.keys) > 1
        masters = [k for k in proto.keys if k.keyset_id == PUBLISHED_MASTER_KEYSET_ID]
        assert masters and all(k.site_id == 0 and len(k.secret) == 32 for k in masters)
