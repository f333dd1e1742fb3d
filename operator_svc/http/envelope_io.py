"""Opening request envelopes and sealing answers (reference §8), on top of
`uid2_crypto.envelope`.

A request body is base64 of `0x01 ‖ iv ‖ AES-256-GCM(client secret)[timestamp ms ‖ nonce(8) ‖
JSON] ‖ tag`, or the same bytes raw with `Content-Type: application/octet-stream`; the answer
comes back in the same form (base64 text or raw bytes), sealed under the same secret, with the
operator's time and the request's nonce. Refresh answers are sealed under the presented refresh
token's refresh_response_key instead, with no timestamp or nonce (`seal_refresh_response`).

Every failure is an `HttpError` whose message says what to fix."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from operator_svc.http.errors import HttpError, client_error
from svc_common import json_text
from uid2_crypto.envelope import ENVELOPE_VERSION, decrypt_request, encrypt_response
from uid2_crypto.errors import EnvelopeError

# A request whose timestamp is further than this from the operator's clock is refused. The
# official operator refuses two whole minutes or more (Duration.toMinutes() > 1): a caller
# whose clock drifts 1-2 minutes works with it, so it must work here too.
MAX_SKEW_MS = 119_999
# Identity map takes 5,000 emails a call; at 254 characters (the longest an address may be),
# enveloped and base64-encoded as the SDKs send them, that is 1.7 MB.
MAX_BODY_BYTES = 2 * 1024 * 1024
BINARY = "application/octet-stream"
_IV = 12


@dataclass(frozen=True)
class OpenedRequest:
    """A decrypted request: its JSON object ({} for an empty payload), nonce and form."""

    # The decrypted JSON carries DII and tokens: never in repr.
    payload: dict[str, Any] = field(repr=False)
    nonce: bytes
    timestamp_ms: int
    binary: bool


def decode_secret(secret_b64: str) -> bytes:
    """The client's 32-byte secret from its base64 form (as `client add` prints it)."""
    return base64.b64decode(secret_b64)


def envelope_bytes(body: bytes, *, binary: bool) -> bytes:
    """The raw envelope: `body` itself when binary, else `body` decoded from base64."""
    if binary:
        return body
    text = body.strip()
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise client_error(
            "BAD_BASE64",
            "the body is not valid base64: send base64 of the encrypted envelope, or its raw "
            f"bytes with Content-Type: {BINARY}",
        ) from None


def open_request(secret: bytes, body: bytes, *, binary: bool, now_ms: int) -> OpenedRequest:
    envelope = envelope_bytes(body, binary=binary)
    if not envelope:
        raise client_error("EMPTY_BODY", "the body is empty: send the encrypted request envelope")
    if envelope[0] != ENVELOPE_VERSION:
        raise client_error(
            "BAD_VERSION",
            f"the envelope's first byte must be version {ENVELOPE_VERSION}, got {envelope[0]}",
        )
    try:
        timestamp_ms, nonce, payload = decrypt_request(secret, envelope)
    except EnvelopeError as exc:
        if exc.reason == "TOO_SHORT":
            raise client_error(
                "ENVELOPE_TOO_SHORT",
                "the envelope is too short: version byte, 12-byte IV, encrypted timestamp and "
                "nonce (16 bytes) and the 16-byte tag at least",
            ) from None
        raise client_error(
            "BAD_CIPHERTEXT",
            "the envelope does not decrypt: encrypt it with this API key's client secret "
            "(AES-256-GCM) and send it unaltered",
        ) from None
    skew_ms = timestamp_ms - now_ms
    if abs(skew_ms) > MAX_SKEW_MS:
        raise client_error(
            "STALE_TIMESTAMP",
            f"the request timestamp is {abs(skew_ms) / 1000:.1f} s "
            f"{'ahead of' if skew_ms > 0 else 'behind'} the operator's clock (less than "
            f"{(MAX_SKEW_MS + 1) // 60_000} minutes allowed): stamp each request with the "
            "current time in epoch milliseconds and check the caller's clock",
        )
    return OpenedRequest(parse_json(payload), nonce, timestamp_ms, binary)


def parse_json(payload: bytes) -> dict[str, Any]:
    if not payload.strip():
        return {}
    try:
        obj = json_text.loads(payload.decode("utf-8"))
    except ValueError:
        raise client_error(
            "BAD_JSON", "the decrypted payload is not UTF-8 JSON: send a JSON object"
        ) from None
    if not isinstance(obj, dict):
        raise client_error("BAD_JSON", "the decrypted payload must be a JSON object")
    try:
        # JSON escapes can smuggle lone UTF-16 surrogates, which no rule downstream can hash.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise client_error(
            "BAD_JSON",
            "the JSON holds a lone surrogate escape (\\ud800-\\udfff): send valid Unicode",
        ) from None
    return obj


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


def seal_response(
    secret: bytes,
    request: OpenedRequest,
    answer: dict[str, Any],
    *,
    now_ms: int,
    rng: Callable[[int], bytes],
) -> bytes:
    """The encrypted answer `{"status": ..., "body": ...}` in the request's form."""
    sealed = encrypt_response(
        secret, _json_bytes(answer), now_ms=now_ms, nonce=request.nonce, iv=rng(_IV)
    )
    return sealed if request.binary else base64.b64encode(sealed)


def seal_refresh_response(
    response_key_b64: str, answer: dict[str, Any], *, rng: Callable[[int], bytes]
) -> bytes:
    """A refresh answer: base64 of iv ‖ AES-256-GCM(refresh_response_key)[JSON] ‖ tag."""
    key = base64.b64decode(response_key_b64)
    iv = rng(_IV)
    return base64.b64encode(iv + AESGCM(key).encrypt(iv, _json_bytes(answer), None))


def error_body(error: HttpError) -> bytes:
    return _json_bytes(error.body())


__all__ = [
    "BINARY",
    "MAX_BODY_BYTES",
    "MAX_SKEW_MS",
    "OpenedRequest",
    "decode_secret",
    "envelope_bytes",
    "error_body",
    "open_request",
    "parse_json",
    "seal_refresh_response",
    "seal_response",
]
