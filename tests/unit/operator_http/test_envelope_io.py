"""operator_svc.http.envelope_io: opening requests and sealing answers, against the reference
vector and the SDK's own envelope code."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os

import pytest
from uid2_client.encryption import _decrypt_gcm
from uid2_client.request_response_util import _decrypt_payload, create_envelope

from operator_svc.http.envelope_io import (
    MAX_SKEW_MS,
    OpenedRequest,
    envelope_bytes,
    open_request,
    parse_json,
    seal_refresh_response,
    seal_response,
)
from operator_svc.http.errors import HttpError
from tests.unit.crypto.vectors import VECTORS
from uid2_crypto.envelope import encrypt_request

ENV = VECTORS["envelope"]
SECRET = base64.b64decode(ENV["client_secret_b64"])
NONCE = bytes.fromhex(ENV["nonce8_hex"])
NOW = ENV["timestamp_ms"]


def _fixed(data: bytes) -> object:
    return lambda n: data[:n]


def _request(payload: bytes, *, ts: int = NOW, secret: bytes = SECRET) -> bytes:
    return encrypt_request(secret, payload, now_ms=ts, nonce=NONCE, iv=os.urandom(12))


def _fail(body: bytes, *, binary: bool = False, now: int = NOW) -> HttpError:
    with pytest.raises(HttpError) as info:
        open_request(SECRET, body, binary=binary, now_ms=now)
    assert info.value.http_status == 400
    assert info.value.status == "client_error"
    return info.value


def test_opens_the_reference_request() -> None:
    opened = open_request(SECRET, ENV["request_body_base64"].encode(), binary=False, now_ms=NOW)
    assert opened.payload == json.loads(ENV["request_json"])
    assert (opened.nonce, opened.timestamp_ms, opened.binary) == (NONCE, NOW, False)


def test_seals_the_reference_response_byte_exact() -> None:
    opened = OpenedRequest({}, NONCE, NOW, binary=False)
    sealed = seal_response(
        SECRET,
        opened,
        json.loads(ENV["response_json"]),
        now_ms=ENV["response_timestamp_ms"],
        rng=_fixed(bytes.fromhex(ENV["response_gcm_iv_hex"])),  # type: ignore[arg-type]  # a fixed-IV rng, not os.urandom
    )
    assert sealed.decode() == ENV["response_body_base64"]


def test_sdk_envelope_round_trip_text_and_binary() -> None:
    now = dt.datetime.now(tz=dt.UTC)
    env = create_envelope(SECRET, now, b'{"email": "a@b.com"}')
    now_ms = int(now.timestamp() * 1000)
    for body, binary in ((env.envelope, False), (env.binary_envelope, True)):
        opened = open_request(SECRET, body, binary=binary, now_ms=now_ms)
        assert opened.payload == {"email": "a@b.com"}
        sealed = seal_response(SECRET, opened, {"status": "success"}, now_ms=now_ms, rng=os.urandom)
        raw = sealed if binary else base64.b64decode(sealed)
        assert json.loads(_decrypt_payload(SECRET, raw, env.nonce)) == {"status": "success"}


def test_empty_payload_is_an_empty_object() -> None:
    body = base64.b64encode(_request(b""))
    assert open_request(SECRET, body, binary=False, now_ms=NOW).payload == {}


def test_whitespace_around_base64_is_fine() -> None:
    body = b"  " + base64.b64encode(_request(b"{}")) + b"\n"
    assert open_request(SECRET, body, binary=False, now_ms=NOW).payload == {}


@pytest.mark.parametrize("skew", [MAX_SKEW_MS, -MAX_SKEW_MS, 0, 1])
def test_timestamp_within_window(skew: int) -> None:
    body = base64.b64encode(_request(b"{}", ts=NOW + skew))
    open_request(SECRET, body, binary=False, now_ms=NOW)


@pytest.mark.parametrize("skew", [MAX_SKEW_MS + 1, -MAX_SKEW_MS - 1, 3_600_000, -NOW])
def test_stale_or_future_timestamp(skew: int) -> None:
    err = _fail(base64.b64encode(_request(b"{}", ts=NOW + skew)))
    assert err.reason == "STALE_TIMESTAMP"
    assert "clock" in err.message


def test_wrong_secret() -> None:
    err = _fail(base64.b64encode(_request(b"{}", secret=os.urandom(32))))
    assert err.reason == "BAD_CIPHERTEXT"
    assert "client secret" in err.message


@pytest.mark.parametrize("at", [1, 5, 13, 20, -1])
def test_tampered_byte(at: int) -> None:
    raw = bytearray(_request(b'{"email": "a@b.com"}'))
    raw[at] ^= 0x01
    assert _fail(bytes(raw), binary=True).reason == "BAD_CIPHERTEXT"


def test_wrong_version_byte() -> None:
    raw = bytearray(_request(b"{}"))
    raw[0] = 2
    err = _fail(base64.b64encode(bytes(raw)))
    assert err.reason == "BAD_VERSION"
    assert "version 1" in err.message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not base64 !!", "BAD_BASE64"),
        (b"QUJD=x", "BAD_BASE64"),
        (b"", "EMPTY_BODY"),
        (base64.b64encode(b"\x01" + b"\x00" * 20), "ENVELOPE_TOO_SHORT"),
        (b"\xff\xfe", "BAD_BASE64"),
    ],
)
def test_garbage(body: bytes, reason: str) -> None:
    assert _fail(body).reason == reason


def test_binary_body_is_not_base64_decoded() -> None:
    raw = _request(b"{}")
    assert open_request(SECRET, raw, binary=True, now_ms=NOW).payload == {}
    assert envelope_bytes(raw, binary=True) == raw
    with pytest.raises(HttpError):
        open_request(SECRET, raw, binary=False, now_ms=NOW)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 100_000, b'{"email": "\\ud800"}'],
)
def test_bad_json(payload: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parse_json(payload)
    assert info.value.reason == "BAD_JSON"


def test_refresh_response_readable_by_sdk_with_the_response_key() -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    sealed = seal_refresh_response(key, {"status": "optout"}, rng=os.urandom)
    plain = _decrypt_gcm(base64.b64decode(sealed), base64.b64decode(key))
    assert json.loads(plain) == {"status": "optout"}


def test_error_body_is_plain_json() -> None:
    from operator_svc.http.envelope_io import error_body

    err = HttpError(401, "unauthorized", "the API key is not valid")
    assert json.loads(error_body(err)) == {
        "status": "unauthorized",
        "message": "the API key is not valid",
    }
