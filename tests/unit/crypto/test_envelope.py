import base64

import pytest

from tests.unit.crypto.vectors import VECTORS
from uid2_crypto.envelope import (
    EnvelopeError,
    decrypt_request,
    decrypt_response,
    encrypt_request,
    encrypt_response,
)

ENV = VECTORS["envelope"]
SECRET = base64.b64decode(ENV["client_secret_b64"])
NONCE = bytes.fromhex(ENV["nonce8_hex"])


def test_request_vector() -> None:
    body = encrypt_request(
        SECRET,
        ENV["request_json"].encode(),
        now_ms=ENV["timestamp_ms"],
        nonce=NONCE,
        iv=bytes.fromhex(ENV["gcm_iv_hex"]),
    )
    assert base64.b64encode(body).decode() == ENV["request_body_base64"]
    ts, nonce, payload = decrypt_request(SECRET, base64.b64decode(ENV["request_body_base64"]))
    assert (ts, nonce, payload.decode()) == (ENV["timestamp_ms"], NONCE, ENV["request_json"])


def test_response_vector() -> None:
    body = encrypt_response(
        SECRET,
        ENV["response_json"].encode(),
        now_ms=ENV["response_timestamp_ms"],
        nonce=NONCE,
        iv=bytes.fromhex(ENV["response_gcm_iv_hex"]),
    )
    assert base64.b64encode(body).decode() == ENV["response_body_base64"]
    ts, nonce, payload = decrypt_response(SECRET, base64.b64decode(ENV["response_body_base64"]))
    assert (ts, nonce, payload.decode()) == (
        ENV["response_timestamp_ms"],
        NONCE,
        ENV["response_json"],
    )


def test_sdk_reads_our_response() -> None:
    from uid2_client.request_response_util import _decrypt_payload

    body = encrypt_response(
        SECRET, b'{"status": "success"}', now_ms=1, nonce=NONCE, iv=b"\x07" * 12
    )
    assert _decrypt_payload(SECRET, body, NONCE) == b'{"status": "success"}'


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "TOO_SHORT"),
        (b"\x01" + bytes(30), "TOO_SHORT"),
        (b"\x02" + bytes(60), "BAD_VERSION"),
        (b"\x01" + bytes(60), "BAD_CIPHERTEXT"),
    ],
)
def test_request_errors(data: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as err:
        decrypt_request(SECRET, data)
    assert err.value.reason == reason


def test_tampered_and_wrong_secret() -> None:
    good = base64.b64decode(ENV["request_body_base64"])
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(EnvelopeError, match="BAD_CIPHERTEXT"):
        decrypt_request(SECRET, bytes(bad))
    with pytest.raises(EnvelopeError, match="BAD_CIPHERTEXT"):
        decrypt_request(bytes(32), good)
    with pytest.raises(EnvelopeError, match="TOO_SHORT"):
        decrypt_response(SECRET, bytes(20))
