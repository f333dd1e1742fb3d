"""Every DecryptionStatus, the order of checks, and the lifetime / clock-skew boundaries."""

import base64
import os
from collections.abc import Iterable
from typing import Any

import pytest

from tests.unit.crypto.tokens_helpers import BASE_MS, RAW_UID, mint, payload
from tests.unit.crypto.vectors import NOW_MS, container, master_key, site_key, token_vectors
from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.keys import Key, KeyRing
from uid2_crypto.tokens import (
    PRIVACY_BIT_CLIENT_SIDE_GENERATED,
    ClientType,
    DecryptionStatus,
    TokenDecoder,
    claimed_scope,
    encode_advertising_token_v2,
    encode_advertising_token_v3,
)

DAY_S = 86_400
BIDSTREAM_S = 3 * DAY_S
SHARING_S = 30 * DAY_S
SKEW_S = 1800
UID_B64 = base64.b64encode(RAW_UID).decode()


def decoder(keys: Iterable[Key] | None = None, **kw: Any) -> TokenDecoder:
    ring = KeyRing(keys) if keys is not None else container().keyring
    kw.setdefault("max_bidstream_lifetime_s", BIDSTREAM_S)
    kw.setdefault("max_sharing_lifetime_s", SHARING_S)
    kw.setdefault("allow_clock_skew_s", SKEW_S)
    return TokenDecoder(ring, **kw)


def test_success_fields() -> None:
    token = mint(privacy_bits=0)
    r = decoder().decrypt(token, BASE_MS + 1000)
    assert r.status is DecryptionStatus.SUCCESS and r.success
    assert r.raw_uid == UID_B64
    assert (r.site_id, r.site_key_site_id) == (9000, 9000)
    assert r.created_ms == BASE_MS and r.established_ms == BASE_MS - 3_600_000
    assert r.version == "V4" and r.privacy_bits == 0 and not r.is_client_side_generated


def test_site_id_and_site_key_site_id_are_reported_apart() -> None:
    # The token's site id comes from the payload, the other from the key that decrypted it.
    r = decoder().decrypt(mint(site_id=4321), BASE_MS)
    assert r.status is DecryptionStatus.SUCCESS
    assert (r.site_id, r.site_key_site_id) == (4321, site_key().site_id)
    assert site_key().site_id != 4321


def test_phone_euid_and_v3_raw_uid() -> None:
    raw = b"\x14" + RAW_UID
    token = mint(raw_uid=raw, identity_type=IdentityType.PHONE, identity_scope=IdentityScope.EUID)
    r = decoder().decrypt(token, BASE_MS)
    assert r.status is DecryptionStatus.SUCCESS
    assert r.identity_type is IdentityType.PHONE and r.identity_scope is IdentityScope.EUID
    assert r.raw_uid is not None
    assert base64.b64decode(r.raw_uid) == raw
    assert token[:2] == "F4"  # EUID phone


def test_not_initialized() -> None:
    d = TokenDecoder(None, max_bidstream_lifetime_s=1, max_sharing_lifetime_s=1)
    assert d.decrypt(mint(), BASE_MS).status is DecryptionStatus.NOT_INITIALIZED


def test_keys_not_synced() -> None:
    assert decoder([]).decrypt(mint(), BASE_MS).status is DecryptionStatus.KEYS_NOT_SYNCED
    expired_all = (master_key().expires + 1) * 1000
    assert decoder().decrypt(mint(), expired_all).status is DecryptionStatus.KEYS_NOT_SYNCED
    # A key is valid while activates <= now < expires: at the last expiry none is left.
    last_expiry_ms = max(k.expires for k in container().keyring.keys) * 1000
    assert decoder().decrypt(mint(), last_expiry_ms).status is DecryptionStatus.KEYS_NOT_SYNCED
    assert decoder().decrypt(mint(), last_expiry_ms - 1).status is not (
        DecryptionStatus.KEYS_NOT_SYNCED
    )


@pytest.mark.parametrize("token", ["", "A", "A4A", "!!!!!!!!", "A4AAAACkAAE", "é" * 30])
def test_invalid_payload(token: str) -> None:
    assert decoder().decrypt(token, BASE_MS).status is DecryptionStatus.INVALID_PAYLOAD


def test_invalid_payload_on_tampering() -> None:
    raw = bytearray(base64.urlsafe_b64decode(mint() + "=="))
    raw[40] ^= 1
    token = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert decoder().decrypt(token, BASE_MS).status is DecryptionStatus.INVALID_PAYLOAD


def test_version_not_supported() -> None:
    raw = bytearray(base64.urlsafe_b64decode(mint() + "=="))
    raw[1] = 99
    token = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert decoder().decrypt(token, BASE_MS).status is DecryptionStatus.VERSION_NOT_SUPPORTED
    # Judged from the header even when the rest is not base64 (as the SDK does).
    assert decoder().decrypt(token[:8] + "!!", BASE_MS).status is (
        DecryptionStatus.VERSION_NOT_SUPPORTED
    )


def test_not_authorized_for_master_key() -> None:
    r = decoder([site_key()]).decrypt(mint(), BASE_MS)
    assert r.status is DecryptionStatus.NOT_AUTHORIZED_FOR_MASTER_KEY
    only = decoder(authorized_key_ids=frozenset({site_key().id}))
    assert only.decrypt(mint(), BASE_MS).status is DecryptionStatus.NOT_AUTHORIZED_FOR_MASTER_KEY


def test_not_authorized_for_key() -> None:
    r = decoder([master_key()]).decrypt(mint(), BASE_MS)
    assert r.status is DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    assert r.raw_uid is None and r.expires_ms is not None


def test_expired_token_and_boundary() -> None:
    token = mint(expires_ms=BASE_MS + 60_000)
    assert decoder().decrypt(token, BASE_MS + 60_000).status is DecryptionStatus.SUCCESS
    r = decoder().decrypt(token, BASE_MS + 60_001)
    assert r.status is DecryptionStatus.EXPIRED_TOKEN and r.raw_uid is None


def test_expiry_is_checked_before_the_site_key() -> None:
    token = mint(expires_ms=BASE_MS + 1)
    r = decoder([master_key()]).decrypt(token, BASE_MS + 2)
    assert r.status is DecryptionStatus.EXPIRED_TOKEN


@pytest.mark.parametrize(
    ("client_type", "max_s"), [(ClientType.BIDSTREAM, BIDSTREAM_S), (ClientType.SHARING, SHARING_S)]
)
def test_lifetime_boundary(client_type: ClientType, max_s: int) -> None:
    ok = mint(expires_ms=BASE_MS + max_s * 1000)
    too_long = mint(expires_ms=BASE_MS + max_s * 1000 + 1)
    d = decoder()
    assert d.decrypt(ok, BASE_MS, client_type=client_type).status is DecryptionStatus.SUCCESS
    r = d.decrypt(too_long, BASE_MS, client_type=client_type)
    assert r.status is DecryptionStatus.INVALID_TOKEN_LIFETIME and r.raw_uid is None


def test_clock_skew_boundary() -> None:
    future = mint(created_ms=BASE_MS + SKEW_S * 1000, expires_ms=BASE_MS + DAY_S * 1000)
    d = decoder()
    assert d.decrypt(future, BASE_MS).status is DecryptionStatus.SUCCESS
    assert d.decrypt(future, BASE_MS - 1).status is DecryptionStatus.INVALID_TOKEN_LIFETIME


def test_unlimited_lifetime_when_container_has_none() -> None:
    d = TokenDecoder.from_container(container())
    token = mint(expires_ms=BASE_MS + 400 * DAY_S * 1000)
    assert d.decrypt(token, BASE_MS).status is DecryptionStatus.SUCCESS


def test_domain_check_only_for_client_side_bidstream() -> None:
    d = decoder(site_data={9000: (["pub.example"], [])})
    cstg = mint(privacy_bits=PRIVACY_BIT_CLIENT_SIDE_GENERATED | 1)
    assert d.decrypt(cstg, BASE_MS).status is DecryptionStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED
    assert d.decrypt(cstg, BASE_MS, domain_or_app="PUB.example").status is DecryptionStatus.SUCCESS
    shared = d.decrypt(cstg, BASE_MS, client_type=ClientType.SHARING)
    assert shared.status is DecryptionStatus.SUCCESS and shared.is_client_side_generated
    server_side = mint(privacy_bits=0b01)
    assert d.decrypt(server_side, BASE_MS).status is DecryptionStatus.SUCCESS
    other_site = mint(privacy_bits=PRIVACY_BIT_CLIENT_SIDE_GENERATED, site_id=9001)
    r = d.decrypt(other_site, BASE_MS, domain_or_app="pub.example")
    assert r.status is DecryptionStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED


def test_a_page_host_may_be_a_subdomain_of_a_listed_domain_down_to_two_labels() -> None:
    d = decoder(site_data={9000: (["news.example.com", "com"], ["com.example.app"])})
    cstg = mint(privacy_bits=PRIVACY_BIT_CLIENT_SIDE_GENERATED | 1)

    def status(name: str, subdomains: bool = True) -> DecryptionStatus:
        return d.decrypt(cstg, BASE_MS, domain_or_app=name, subdomains=subdomains).status

    ok, failed = DecryptionStatus.SUCCESS, DecryptionStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED
    assert status("news.example.com") is ok
    assert status("www.news.example.com") is ok and status("a.b.NEWS.example.com") is ok
    assert status("www.news.example.com", subdomains=False) is failed  # exact, as the SDKs
    assert status("example.com") is failed and status("badnews.example.com") is failed
    assert status("x.example.com") is failed  # "com" is listed, but no parent is one label
    assert status("x.com.example.app", subdomains=True) is failed


def test_domain_check_comes_before_lifetime() -> None:
    d = decoder()
    token = mint(
        privacy_bits=PRIVACY_BIT_CLIENT_SIDE_GENERATED, expires_ms=BASE_MS + 100 * DAY_S * 1000
    )
    assert d.decrypt(token, BASE_MS).status is DecryptionStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED


def _v2() -> str:
    """A v2 token (legacy: decode only) of UID_B64 for site 9000, a second past BASE_MS."""
    return encode_advertising_token_v2(
        UID_B64,
        9000,
        master_key(),
        site_key(),
        expires_ms=BASE_MS + 1000,
        established_ms=BASE_MS,
        rng=os.urandom,
    )


def test_v3_and_v2_statuses() -> None:
    p = payload()
    v3 = encode_advertising_token_v3(p, master_key(), site_key(), os.urandom)
    r = decoder().decrypt(v3, BASE_MS)
    assert (r.status, r.version, r.raw_uid) == (DecryptionStatus.SUCCESS, "V3", UID_B64)
    v2 = _v2()
    r = decoder().decrypt(v2, BASE_MS)
    assert (r.status, r.version, r.raw_uid, r.identity_type) == (
        DecryptionStatus.SUCCESS,
        "V2",
        UID_B64,
        None,
    )
    assert decoder().decrypt(v2, BASE_MS + 1000).status is DecryptionStatus.SUCCESS
    assert decoder().decrypt(v2, BASE_MS + 1001).status is DecryptionStatus.EXPIRED_TOKEN
    assert decoder([master_key()]).decrypt(v2, BASE_MS).status is (
        DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    )
    assert decoder([site_key()]).decrypt(v2, BASE_MS).status is (
        DecryptionStatus.NOT_AUTHORIZED_FOR_MASTER_KEY
    )
    # v2 has no creation time: its remaining lifetime is judged from now.
    long_v2 = encode_advertising_token_v2(
        UID_B64,
        9000,
        master_key(),
        site_key(),
        expires_ms=BASE_MS + BIDSTREAM_S * 1000 + 1,
        established_ms=BASE_MS,
        rng=os.urandom,
    )
    assert decoder().decrypt(long_v2, BASE_MS).status is DecryptionStatus.INVALID_TOKEN_LIFETIME
    assert decoder().decrypt(long_v2, BASE_MS + 1).status is DecryptionStatus.SUCCESS


def test_every_status_is_produced() -> None:
    """A guard: when a status is added, this lists the one the tests above do not reach."""
    d = decoder(site_data={})
    seen = {
        TokenDecoder(None, max_bidstream_lifetime_s=1, max_sharing_lifetime_s=1)
        .decrypt("", 0)
        .status,
        decoder([]).decrypt("", 0).status,
        d.decrypt("", BASE_MS).status,
        d.decrypt("AAAAAAAA", BASE_MS).status,
        d.decrypt(mint(), BASE_MS).status,
        decoder([site_key()]).decrypt(mint(), BASE_MS).status,
        decoder([master_key()]).decrypt(mint(), BASE_MS).status,
        d.decrypt(mint(expires_ms=BASE_MS), BASE_MS + 1).status,
        d.decrypt(mint(expires_ms=BASE_MS + 10**12), BASE_MS).status,
        d.decrypt(mint(privacy_bits=PRIVACY_BIT_CLIENT_SIDE_GENERATED), BASE_MS).status,
    }
    assert seen == set(DecryptionStatus)


def test_vector_tokens_expire_for_a_late_clock() -> None:
    for v in token_vectors():
        r = TokenDecoder.from_container(container(v["expected"]["identity_scope"])).decrypt(
            v["token"], (master_key().expires - 1) * 1000
        )
        assert r.status is DecryptionStatus.EXPIRED_TOKEN, v["name"]
    assert (master_key().expires - 1) * 1000 > NOW_MS


@pytest.mark.parametrize("scope", [IdentityScope.UID2, IdentityScope.EUID])
@pytest.mark.parametrize("identity_type", [IdentityType.EMAIL, IdentityType.PHONE])
def test_the_scope_a_token_claims_is_read_from_its_prefix(
    scope: IdentityScope, identity_type: IdentityType
) -> None:
    """What the SSP labels a token's eid source by (EUID review: EUID tokens went out under
    UID2's "uidapi.com"), and the publisher names its cookie by."""
    p = payload(identity_scope=scope, identity_type=identity_type)
    v4 = mint(identity_scope=scope, identity_type=identity_type)
    v3 = encode_advertising_token_v3(p, master_key(), site_key(), os.urandom)
    assert claimed_scope(v4) is scope and claimed_scope(v3) is scope


def test_a_token_with_no_scope_claims_uid2() -> None:
    v2 = _v2()
    for token in (v2, "", "E4", "not base64 at all", "\u00e9" * 10):
        assert claimed_scope(token) is IdentityScope.UID2, token
