"""The decoder answers every input with a status and never raises."""

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.crypto.tokens_helpers import BASE_MS, mint
from tests.unit.crypto.vectors import NOW_MS, container, token_vectors
from uid2_crypto.tokens import (
    PRIVACY_BIT_CLIENT_SIDE_GENERATED,
    ClientType,
    DecryptionStatus,
    DecryptResult,
    TokenDecoder,
)

DECODER = TokenDecoder(
    container().keyring,
    site_data={9000: (["a.com"], [])},
    max_bidstream_lifetime_s=3 * 86400,
    max_sharing_lifetime_s=30 * 86400,
)
VALID = [mint(), mint(privacy_bits=PRIVACY_BIT_CLIENT_SIDE_GENERATED)] + [
    v["token"] for v in token_vectors()
]
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="


def check(result: DecryptResult) -> None:
    assert isinstance(result.status, DecryptionStatus)
    if result.status is not DecryptionStatus.SUCCESS:
        assert result.raw_uid is None


def decode_raw(token: str) -> bytes:
    return base64.b64decode(token.replace("-", "+").replace("_", "/") + "=" * (-len(token) % 4))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_random_text(s: str) -> None:
    check(DECODER.decrypt(s, BASE_MS))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=B64URL, min_size=0, max_size=300), st.sampled_from(list(ClientType)))
def test_random_base64ish(s: str, client_type: ClientType) -> None:
    check(DECODER.decrypt(s, BASE_MS, domain_or_app="a.com", client_type=client_type))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_truncations(token: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(token) - 1))
    r = DECODER.decrypt(token[:cut], NOW_MS)
    check(r)
    assert r.status is not DecryptionStatus.SUCCESS


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_bit_flips(token: str, data: st.DataObject) -> None:
    raw = bytearray(decode_raw(token))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    flipped = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    original = DECODER.decrypt(token, NOW_MS, domain_or_app="a.com")
    r = DECODER.decrypt(flipped, NOW_MS, domain_or_app="a.com")
    check(r)
    if r.status is DecryptionStatus.SUCCESS:
        # Only the unauthenticated prefix byte (type and scope bits) can change unnoticed,
        # and never the raw UID2 it carries.
        assert pos == 0 and r.raw_uid == original.raw_uid


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_character_edits(token: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(token) - 1))
    ch = data.draw(st.characters())
    check(DECODER.decrypt(token[:pos] + ch + token[pos + 1 :], NOW_MS))
    check(DECODER.decrypt(token + data.draw(st.text(max_size=4)), NOW_MS))
    check(DECODER.decrypt(token.rstrip("=") + "=" * data.draw(st.integers(0, 3)), NOW_MS))
