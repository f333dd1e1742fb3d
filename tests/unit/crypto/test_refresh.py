import base64
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.keys import REFRESH_KEYSET_ID, Key, KeyRing
from uid2_crypto.refresh import (
    REFRESH_TOKEN_LENGTH,
    RefreshDecodeStatus,
    RefreshPayload,
    decode_refresh_token,
    encode_refresh_token,
)

KEY = Key(301, REFRESH_KEYSET_ID, -2, 0, 0, 2**40, bytes(range(32)))
OTHER = Key(301, REFRESH_KEYSET_ID, -2, 0, 0, 2**40, bytes(range(1, 33)))
RING = KeyRing([KEY])


def payload(**kw: object) -> RefreshPayload:
    fields: dict[str, object] = dict(
        expires_ms=1_800_000_000_000 + 30 * 86_400_000,
        created_ms=1_800_000_000_000,
        operator_site_id=1,
        site_id=9000,
        publisher_id=2**63 - 1,
        client_key_id=42,
        privacy_bits=3,
        established_ms=1_799_000_000_000,
        identity_type=IdentityType.PHONE,
        identity_scope=IdentityScope.EUID,
        first_level_hash=bytes(range(100, 132)),
    )
    fields.update(kw)
    return RefreshPayload(**fields)  # type: ignore[arg-type]  # deliberately wrong or loosely typed fields


@pytest.mark.parametrize("scope", list(IdentityScope))
@pytest.mark.parametrize("identity_type", list(IdentityType))
def test_round_trip_and_exact_length(scope: IdentityScope, identity_type: IdentityType) -> None:
    p = payload(identity_scope=scope, identity_type=identity_type)
    token, response_key = encode_refresh_token(p, KEY, os.urandom)
    assert len(token) == REFRESH_TOKEN_LENGTH == 388
    assert len(base64.b64decode(response_key)) == 32
    assert decode_refresh_token(token, RING) == (RefreshDecodeStatus.OK, p, response_key)


def test_deterministic_with_injected_rng() -> None:
    chunks = iter([b"k" * 32, b"i" * 12, b"o" * 12] * 2)
    a = encode_refresh_token(payload(), KEY, lambda n: next(chunks))
    b = encode_refresh_token(payload(), KEY, lambda n: next(chunks))
    assert a == b and a[1] == base64.b64encode(b"k" * 32).decode()


def test_fresh_randomness_per_token() -> None:
    assert encode_refresh_token(payload(), KEY, os.urandom) != encode_refresh_token(
        payload(), KEY, os.urandom
    )


def test_foreign_key_ring_and_wrong_keyset() -> None:
    token, _ = encode_refresh_token(payload(), KEY, os.urandom)
    assert decode_refresh_token(token, KeyRing([OTHER]))[0] is RefreshDecodeStatus.INVALID
    assert decode_refresh_token(token, KeyRing([]))[0] is RefreshDecodeStatus.INVALID
    advertising = Key(301, 5, 9000, 0, 0, 2**40, bytes(range(32)))
    assert decode_refresh_token(token, KeyRing([advertising]))[0] is RefreshDecodeStatus.INVALID
    with pytest.raises(ValueError):
        encode_refresh_token(payload(), advertising, os.urandom)


def test_every_byte_is_authenticated() -> None:
    token, _ = encode_refresh_token(payload(), KEY, os.urandom)
    raw = base64.b64decode(token)
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        tampered = base64.b64encode(bytes(bad)).decode()
        assert decode_refresh_token(tampered, RING) == (RefreshDecodeStatus.INVALID, None, None)


def test_rejects_bad_payload_values() -> None:
    with pytest.raises(ValueError):
        encode_refresh_token(payload(first_level_hash=b"short"), KEY, os.urandom)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_text_never_raises(s: str) -> None:
    status, p, key = decode_refresh_token(s, RING)
    assert status is RefreshDecodeStatus.INVALID and p is None and key is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_edits_never_raise(data: st.DataObject) -> None:
    token, _ = encode_refresh_token(payload(), KEY, os.urandom)
    pos = data.draw(st.integers(0, len(token) - 1))
    edited = token[:pos] + data.draw(st.characters()) + token[pos + 1 :]
    status, _, _ = decode_refresh_token(edited, RING)
    assert status is RefreshDecodeStatus.INVALID or edited == token
    cut = data.draw(st.integers(0, len(token) - 1))
    assert decode_refresh_token(token[:cut], RING)[0] is RefreshDecodeStatus.INVALID


# A second refresh key with the same secret: only the key ids in the headers tell them apart.
TWIN = Key(302, REFRESH_KEYSET_ID, -2, 0, 0, 2**40, bytes(range(32)))
_PLAIN = struct.Struct(">QQIIQIIQBB32s10s")


def _plain(identity_type: int, scope: int, reserved: bytes = bytes(10)) -> bytes:
    return _PLAIN.pack(2**62, 1, 1, 9000, 0, 42, 1, 1, identity_type, scope, bytes(32), reserved)


def _inner(scope_byte: int, key: Key, plain: bytes) -> bytes:
    header = struct.pack(">BBI", scope_byte, 112, key.id)
    nonce = os.urandom(12)
    return header + nonce + key.aead.encrypt(nonce, plain, header)


def _wrap(scope_byte: int, key: Key, inner: bytes) -> str:
    body = (
        b'{"refresh_response_key":"'
        + base64.b64encode(bytes(32))
        + b'","refresh_token":"'
        + base64.urlsafe_b64encode(inner)
        + b'"}'
    )
    header = struct.pack(">BI", scope_byte, key.id)
    nonce = os.urandom(12)
    return base64.b64encode(header + nonce + key.aead.encrypt(nonce, body, header)).decode()


def test_layers_that_each_authenticate_must_still_agree() -> None:
    """Built with the refresh key itself: each layer's tag is good, so only the cross-checks
    (scope byte, key id, reserved bytes) can refuse these."""
    euid_phone = (1 << 4) | (1 << 2)
    ok = _wrap(euid_phone, KEY, _inner(euid_phone, KEY, _plain(1, 1)))
    assert decode_refresh_token(ok, RING)[0] is RefreshDecodeStatus.OK
    ring = KeyRing([KEY, TWIN])
    bad = {
        "inner scope byte differs": _wrap(euid_phone, KEY, _inner(0, KEY, _plain(1, 1))),
        "inner key id differs": _wrap(euid_phone, KEY, _inner(euid_phone, TWIN, _plain(1, 1))),
        "reserved bytes set": _wrap(
            euid_phone, KEY, _inner(euid_phone, KEY, _plain(1, 1, b"\x01" + bytes(9)))
        ),
        "payload type and scope differ": _wrap(
            euid_phone, KEY, _inner(euid_phone, KEY, _plain(0, 1))
        ),
    }
    for why, token in bad.items():
        assert decode_refresh_token(token, ring)[0] is RefreshDecodeStatus.INVALID, why
