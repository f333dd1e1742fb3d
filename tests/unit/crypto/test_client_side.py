"""uid2_crypto.client_side against a page written from the protocol (tests/support/cstg_page)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from demo.page import page_request
from uid2_crypto.client_side import (
    ClientSideError,
    ServerKeypair,
    open_payload,
    request_aad,
    seal_answer,
    timestamp_aad,
)


def _counter_rng(seed: int) -> Callable[[int], bytes]:
    state = [seed]

    def rng(n: int) -> bytes:
        out = bytes((state[0] + i) % 256 for i in range(n))
        state[0] += n
        return out

    return rng


def test_key_pairs_come_from_the_given_randomness() -> None:
    a = ServerKeypair.generate(_counter_rng(7))
    b = ServerKeypair.generate(_counter_rng(7))
    c = ServerKeypair.generate(_counter_rng(8))
    assert a.private_der() == b.private_der() != c.private_der()
    assert ServerKeypair.from_der(a.private_der()).public_key_text("UID2") == a.public_key_text(
        "UID2"
    )


def test_public_key_text_is_what_the_sdks_strip_and_import() -> None:
    pair = ServerKeypair.generate(_counter_rng(1))
    text = pair.public_key_text("UID2")
    assert text.startswith("UID2-X-P-") and pair.public_key_text("EUID").startswith("EUID-X-P-")
    # The SDKs drop nine characters and import the rest as an SPKI.
    key = serialization.load_der_public_key(base64.b64decode(text[9:]))
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


def test_a_page_request_opens_and_the_answer_reads_back() -> None:
    pair = ServerKeypair.generate(_counter_rng(3))
    page = page_request(pair.public_key_text("UID2"), "sub", {"email_hash": "abc"})
    secret = pair.shared_secret(page.body["public_key"])
    assert secret == page.secret
    plain = open_payload(secret, page.body["iv"], page.body["payload"], page.body["timestamp"])
    assert json.loads(plain) == {"email_hash": "abc"}
    sealed = seal_answer(secret, b'{"status": "optout"}', lambda n: b"\x05" * n)
    assert page.open_answer(sealed) == {"status": "optout"}


def test_the_timestamp_is_authenticated() -> None:
    assert timestamp_aad(1_700_000_000_123) == b"[1700000000123]"
    # An app's request (the UID2 Android and iOS SDKs) adds its name, as the official operator
    # builds it (JsonArray.of(timestamp).add(appName)): compact JSON.
    assert request_aad(1_700_000_000_123, None) == b"[1700000000123]"
    assert request_aad(1_700_000_000_123, "com.example.app") == b'[1700000000123,"com.example.app"]'
    pair = ServerKeypair.generate(_counter_rng(4))
    page = page_request(pair.public_key_text("UID2"), "s", {"email_hash": "x"}, timestamp_ms=5)
    secret = pair.shared_secret(page.body["public_key"])
    with pytest.raises(ClientSideError) as exc:
        open_payload(secret, page.body["iv"], page.body["payload"], 6)
    assert exc.value.reason == "BAD_PAYLOAD"
    app = page_request(
        pair.public_key_text("UID2"), "s", {"email_hash": "x"}, timestamp_ms=5, app_name="com.a"
    )
    secret = pair.shared_secret(app.body["public_key"])
    opened = open_payload(secret, app.body["iv"], app.body["payload"], 5, app_name="com.a")
    assert json.loads(opened) == {"email_hash": "x"}
    for other in (None, "com.b"):
        with pytest.raises(ClientSideError):
            open_payload(secret, app.body["iv"], app.body["payload"], 5, app_name=other)


@pytest.mark.parametrize(
    "public_key",
    [
        "",
        "not base64",
        base64.b64encode(b"\x30\x03junk").decode(),
        # A P-384 key: the protocol is P-256 only.
        base64.b64encode(
            ec.generate_private_key(ec.SECP384R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode(),
        "A" * 300,
    ],
)
def test_a_page_key_that_is_not_p256_is_bad_public_key(public_key: str) -> None:
    pair = ServerKeypair.generate(_counter_rng(2))
    with pytest.raises(ClientSideError) as exc:
        pair.shared_secret(public_key)
    assert exc.value.reason == "BAD_PUBLIC_KEY"


@pytest.mark.parametrize(
    ("iv", "payload", "reason"),
    [
        ("AAAA", "AAAAAAAAAAAAAAAAAAAAAA==", "BAD_IV"),
        ("not base64", "AAAAAAAAAAAAAAAAAAAAAA==", "BAD_IV"),
        (base64.b64encode(b"\0" * 12).decode(), "AAAA", "BAD_PAYLOAD"),
        (base64.b64encode(b"\0" * 12).decode(), "***", "BAD_PAYLOAD"),
        (base64.b64encode(b"\0" * 12).decode(), "AAAAAAAAAAAAAAAAAAAAAA==", "BAD_PAYLOAD"),
    ],
)
def test_bad_iv_and_payload(iv: str, payload: str, reason: str) -> None:
    with pytest.raises(ClientSideError) as exc:
        open_payload(b"k" * 32, iv, payload, 1)
    assert exc.value.reason == reason


def test_only_p256_private_keys_load() -> None:
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="P-256"):
        ServerKeypair.from_der(other)
