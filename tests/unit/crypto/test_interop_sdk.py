"""Interoperability with the official uid2-client 2.9.0, used as an oracle."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from typing import Any

import pytest
from uid2_client import BidstreamClient, SharingClient
from uid2_client.advertising_token_version import AdvertisingTokenVersion
from uid2_client.client_type import ClientType as SdkClientType
from uid2_client.encryption import decrypt_token as sdk_decrypt_token
from uid2_client.identity_scope import IdentityScope as SdkScope
from uid2_client.refresh_keys_util import parse_keys_json
from uid2_client.uid2_token_generator import UID2TokenGenerator

from tests.unit.crypto.vectors import VECTORS, iso_ms
from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.keys import (
    MASTER_KEYSET_ID,
    Key,
    KeyRing,
    key_container_json,
    parse_key_container_json,
)
from uid2_crypto.tokens import (
    PRIVACY_BIT_CLIENT_SIDE_GENERATED,
    ClientType,
    DecryptionStatus,
    TokenDecoder,
    TokenPayload,
    encode_advertising_token_v3,
    encode_advertising_token_v4,
)

SITE = 9000
KEYSET = 99999
NOW_S = 1_800_000_000
NOW_MS = NOW_S * 1000
BIDSTREAM_S = 3 * 86400
SHARING_S = 30 * 86400
SKEW_S = 1800
MASTER = Key(
    1001, MASTER_KEYSET_ID, -1, NOW_S - 200, NOW_S - 100, NOW_S + 86400 * 400, os.urandom(32)
)
OLD_SITE = Key(1002, KEYSET, SITE, NOW_S - 300, NOW_S - 200, NOW_S + 86400 * 400, os.urandom(32))
SITE_KEY = Key(1003, KEYSET, SITE, NOW_S - 200, NOW_S - 50, NOW_S + 86400 * 400, os.urandom(32))
RING = KeyRing([MASTER, OLD_SITE, SITE_KEY])
BODY = key_container_json(
    caller_site_id=SITE,
    default_keyset_id=KEYSET,
    keys=list(reversed(RING.keys)),
    site_data=[(SITE, ["example.com"], [])],
    max_bidstream_lifetime_seconds=BIDSTREAM_S,
    max_sharing_lifetime_seconds=SHARING_S,
    allow_clock_skew_seconds=SKEW_S,
)
OURS = TokenDecoder.from_container(parse_key_container_json(BODY))
SDK_KEYS = parse_keys_json(BODY).keys


def when(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def ms_of(d: dt.datetime) -> int:
    return round(d.timestamp() * 1000)


def payload(raw_uid: bytes, **kw: Any) -> TokenPayload:
    fields: dict[str, Any] = dict(
        raw_uid=raw_uid,
        identity_type=IdentityType.EMAIL,
        identity_scope=IdentityScope.UID2,
        site_id=SITE,
        publisher_id=12,
        client_key_id=34,
        privacy_bits=1,
        established_ms=NOW_MS - 86_400_000,
        refreshed_ms=NOW_MS - 1000,
        created_ms=NOW_MS - 1000,
        expires_ms=NOW_MS + 86_400_000,
    )
    fields.update(kw)
    return TokenPayload(**fields)


def sdk(token: str, now_ms: int, client_type: SdkClientType = SdkClientType.BIDSTREAM) -> Any:
    return sdk_decrypt_token(token, SDK_KEYS, None, client_type, when(now_ms))


def test_sdk_accepts_our_key_json() -> None:
    resp = parse_keys_json(BODY)
    assert resp.success
    keys = resp.keys
    assert len(keys) == 3
    assert keys.get_master_key(when(NOW_MS)).key_id == MASTER.id
    assert keys.get_default_keyset_key(when(NOW_MS)).key_id == SITE_KEY.id
    assert keys.get_active_site_key(SITE, when(NOW_MS)).key_id == SITE_KEY.id
    assert keys.get(MASTER.id).site_id == -1
    assert keys.get_max_bidstream_lifetime_seconds() == BIDSTREAM_S
    assert keys.get_allow_clock_skew_seconds() == SKEW_S
    for client in (
        BidstreamClient("http://x", "k", "AAAA"),
        SharingClient("http://x", "k", "AAAA"),
    ):
        assert client._refresh_json(json.dumps({"status": "success", "body": BODY})).success


@pytest.mark.parametrize(
    ("identity_type", "raw_len"), [(IdentityType.EMAIL, 32), (IdentityType.PHONE, 33)]
)
def test_our_v4_and_v3_tokens_decrypt_with_the_sdk(
    identity_type: IdentityType, raw_len: int
) -> None:
    raw = os.urandom(raw_len)
    p = payload(raw, identity_type=identity_type)
    for token in (
        encode_advertising_token_v4(p, MASTER, SITE_KEY, os.urandom),
        encode_advertising_token_v3(p, MASTER, SITE_KEY, os.urandom),
    ):
        theirs = sdk(token, NOW_MS)
        assert theirs.status.name == "SUCCESS"
        assert theirs.uid == base64.b64encode(raw).decode()
        assert theirs.site_id == SITE
        assert theirs.site_key_site_id == SITE
        assert ms_of(theirs.established) == p.established_ms
        assert ms_of(theirs.expiry) == p.expires_ms
        assert theirs.identity_type.value == int(identity_type)
        ours = OURS.decrypt(token, NOW_MS)
        assert ours.status is DecryptionStatus.SUCCESS and ours.raw_uid == theirs.uid


def test_our_v4_token_through_the_sdk_clients() -> None:
    raw = os.urandom(32)
    now = dt.datetime.now(tz=dt.UTC)
    now_ms = ms_of(now)
    p = payload(raw, created_ms=now_ms - 1000, expires_ms=now_ms + 3_600_000)
    token = encode_advertising_token_v4(p, MASTER, SITE_KEY, os.urandom)
    key_json = json.dumps({"status": "success", "body": BODY})
    bid = BidstreamClient("http://x", "k", "AAAA")
    bid._refresh_json(key_json)
    share = SharingClient("http://x", "k", "AAAA")
    share._refresh_json(key_json)
    for client in (bid, share):
        result = (
            client.decrypt_token_into_raw_uid(token, "example.com")
            if client is bid
            else client.decrypt_token_into_raw_uid(token)
        )
        assert result.status.name == "SUCCESS"
        assert result.uid == base64.b64encode(raw).decode()
        assert result.site_id == SITE


def test_sdk_sharing_encrypt_decrypts_with_us() -> None:
    share = SharingClient("http://x", "k", "AAAA")
    share._refresh_json(json.dumps({"status": "success", "body": BODY}))
    uid = base64.b64encode(os.urandom(32)).decode()
    enc = share._encrypt_raw_uid_into_token(uid, now=when(NOW_MS))
    assert enc.success
    ours = OURS.decrypt(enc.encrypted_data, NOW_MS, client_type=ClientType.SHARING)
    assert ours.status is DecryptionStatus.SUCCESS
    assert ours.raw_uid == uid and ours.site_id == SITE and ours.version == "V4"


@pytest.mark.parametrize(
    "version",
    [
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V2,
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V3,
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V4,
    ],
)
@pytest.mark.parametrize("scope", [SdkScope.UID2, SdkScope.EUID])
@pytest.mark.parametrize("raw_len", [32, 33])
def test_sdk_minted_tokens_decrypt_with_us(
    version: AdvertisingTokenVersion, scope: SdkScope, raw_len: int
) -> None:
    raw = os.urandom(raw_len)
    if raw_len == 33:
        raw = bytes([(int(scope) << 4) | (1 << 2)]) + raw[1:]  # a v3 phone raw UID2
    uid = base64.b64encode(raw).decode()
    established = when(NOW_MS - 7_200_000)
    generated = when(NOW_MS - 60_000)
    expiry = when(NOW_MS + 3_600_000)
    token = UID2TokenGenerator.generate_uid_token(
        uid,
        SDK_KEYS.get(MASTER.id),
        SITE,
        SDK_KEYS.get(SITE_KEY.id),
        scope.value,
        version,
        identity_established=established,
        token_generated=generated,
        token_expiry=expiry,
    )
    theirs = sdk(token, NOW_MS)
    ours = OURS.decrypt(token, NOW_MS)
    assert ours.status is DecryptionStatus.SUCCESS
    assert theirs.status.name == "SUCCESS"
    assert ours.raw_uid == theirs.uid == uid
    assert ours.site_id == theirs.site_id == SITE
    assert ours.established_ms == ms_of(theirs.established)
    assert ours.expires_ms == ms_of(theirs.expiry)
    if version is AdvertisingTokenVersion.ADVERTISING_TOKEN_V2:
        assert ours.identity_type is None and ours.version == "V2"
    else:
        assert ours.identity_type is not None and ours.identity_scope is not None
        assert int(ours.identity_type) == theirs.identity_type.value
        assert int(ours.identity_scope) == int(scope)
        assert ours.created_ms == ms_of(generated)


LIFETIME_CASES = [
    # (name, created offset ms, expires offset ms, now offset ms, client type)
    ("bidstream max", 0, BIDSTREAM_S * 1000, 0, ClientType.BIDSTREAM),
    ("bidstream max + 1 ms", 0, BIDSTREAM_S * 1000 + 1, 0, ClientType.BIDSTREAM),
    ("sharing max", 0, SHARING_S * 1000, 0, ClientType.SHARING),
    ("sharing max + 1 ms", 0, SHARING_S * 1000 + 1, 0, ClientType.SHARING),
    (
        "bidstream above its max is fine for sharing",
        0,
        BIDSTREAM_S * 1000 + 1,
        0,
        ClientType.SHARING,
    ),
    ("skew exactly", SKEW_S * 1000, 86_400_000, 0, ClientType.BIDSTREAM),
    ("skew + 1 ms", SKEW_S * 1000 + 1, 86_400_000, 0, ClientType.BIDSTREAM),
    ("skew + 1 s, sharing", SKEW_S * 1000 + 1000, 86_400_000, 0, ClientType.SHARING),
    ("expires now", -1000, 0, 0, ClientType.BIDSTREAM),
    ("expired 1 ms ago", -1000, 0, 1, ClientType.BIDSTREAM),
    ("expired 1 s ago", -1000, 0, 1000, ClientType.SHARING),
]


@pytest.mark.parametrize(
    ("created", "expires", "now", "client_type"),
    [c[1:] for c in LIFETIME_CASES],
    ids=[c[0] for c in LIFETIME_CASES],
)
def test_lifetime_and_skew_boundaries_agree(
    created: int, expires: int, now: int, client_type: ClientType
) -> None:
    raw = os.urandom(32)
    p = payload(raw, created_ms=NOW_MS + created, expires_ms=NOW_MS + expires, privacy_bits=0)
    token = encode_advertising_token_v4(p, MASTER, SITE_KEY, os.urandom)
    sdk_type = SdkClientType[client_type.name]
    theirs = sdk(token, NOW_MS + now, sdk_type)
    ours = OURS.decrypt(token, NOW_MS + now, client_type=client_type)
    assert ours.status.name == theirs.status.name


def test_sdk_minted_v2_remaining_lifetime_agrees() -> None:
    uid = base64.b64encode(os.urandom(32)).decode()
    expiry = when(NOW_MS + BIDSTREAM_S * 1000)
    token = UID2TokenGenerator.generate_uid_token(
        uid,
        SDK_KEYS.get(MASTER.id),
        SITE,
        SDK_KEYS.get(SITE_KEY.id),
        0,
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V2,
        token_expiry=expiry,
    )
    for now in (NOW_MS, NOW_MS - 1000, NOW_MS + BIDSTREAM_S * 1000 + 1000):
        assert OURS.decrypt(token, now).status.name == sdk(token, now).status.name


def test_unknown_keys_agree() -> None:
    stranger = Key(5555, 7, 7, NOW_S - 10, NOW_S - 10, NOW_S + 1000, os.urandom(32))
    token = encode_advertising_token_v4(payload(os.urandom(32)), MASTER, stranger, os.urandom)
    assert OURS.decrypt(token, NOW_MS).status.name == sdk(token, NOW_MS).status.name
    token = encode_advertising_token_v4(payload(os.urandom(32)), stranger, SITE_KEY, os.urandom)
    assert OURS.decrypt(token, NOW_MS).status.name == sdk(token, NOW_MS).status.name


def test_sdk_cross_platform_token_on_both() -> None:
    v = VECTORS["sdk_cross_platform_token"]
    body = VECTORS["key_json_uid2"]["body"]
    now_ms = iso_ms(v["established"]) + 86_400_000
    theirs = sdk_decrypt_token(
        v["token"], parse_keys_json(body).keys, None, SdkClientType.BIDSTREAM, when(now_ms)
    )
    ours = TokenDecoder.from_container(parse_key_container_json(body)).decrypt(v["token"], now_ms)
    assert theirs.status.name == ours.status.name == "SUCCESS"
    assert theirs.uid == ours.raw_uid == v["uid"]
    assert ms_of(theirs.expiry) == ours.expires_ms == iso_ms(v["expiry"])


def test_sdk_raises_where_we_answer() -> None:
    """The SDK raises on a bad GCM tag; we return INVALID_PAYLOAD (reference §6)."""
    from uid2_client.encryption import EncryptionError

    token = encode_advertising_token_v4(payload(os.urandom(32)), MASTER, SITE_KEY, os.urandom)
    raw = bytearray(base64.urlsafe_b64decode(token + "=="))
    raw[-1] ^= 1
    bad = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(EncryptionError):
        sdk(bad, NOW_MS)
    assert OURS.decrypt(bad, NOW_MS).status is DecryptionStatus.INVALID_PAYLOAD


@pytest.mark.parametrize("privacy_bits", [0, 1, 3, PRIVACY_BIT_CLIENT_SIDE_GENERATED | 1])
def test_client_side_flag_agrees_with_the_sdk(privacy_bits: int) -> None:
    token = encode_advertising_token_v4(
        payload(os.urandom(32), privacy_bits=privacy_bits), MASTER, SITE_KEY, os.urandom
    )
    theirs = sdk(token, NOW_MS, SdkClientType.SHARING)
    ours = OURS.decrypt(token, NOW_MS, client_type=ClientType.SHARING)
    assert ours.status is DecryptionStatus.SUCCESS and theirs.status.name == "SUCCESS"
    assert ours.is_client_side_generated is theirs.is_client_side_generated
    assert ours.is_client_side_generated is bool(privacy_bits & PRIVACY_BIT_CLIENT_SIDE_GENERATED)


@pytest.mark.parametrize("prefix", [0x03, 0x07, 0x0B, 0x0F, 0x13, 0x17, 0x1B, 0x1F])
def test_identity_type_read_from_the_prefix_as_the_sdk_reads_it(prefix: int) -> None:
    # The prefix byte is not authenticated: any value decrypts, so both must read it alike.
    raw = bytearray(
        base64.urlsafe_b64decode(
            encode_advertising_token_v4(payload(os.urandom(32)), MASTER, SITE_KEY, os.urandom)
            + "=="
        )
    )
    raw[0] = prefix
    token = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    theirs = sdk(token, NOW_MS)
    ours = OURS.decrypt(token, NOW_MS)
    assert theirs.status.name == ours.status.name == "SUCCESS"
    assert ours.identity_type is not None
    assert int(ours.identity_type) == theirs.identity_type.value
