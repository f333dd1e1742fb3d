"""The page's side of client-side token generation, what Prebid.js and the UID2 web SDK do in the
browser, written from the protocol and independently of the operator's uid2_crypto.client_side
(the demo's page, and the tests' stand-in for a browser; tests/support/prebid_cstg.py runs
Prebid.js's own code for the same job)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64_sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@dataclass
class PageRequest:
    """One request's body and the key its answer is sealed with."""

    body: dict[str, Any]
    secret: bytes

    def encoded(self) -> bytes:
        return json.dumps(self.body).encode()

    def open_answer(self, text: bytes | str) -> Any:
        sealed = base64.b64decode(text)
        return json.loads(AESGCM(self.secret).decrypt(sealed[:12], sealed[12:], None))


def page_request(
    server_public_key: str,
    subscription_id: str,
    payload: dict[str, Any] | bytes,
    *,
    timestamp_ms: int | None = None,
    aad_timestamp_ms: int | None = None,
    app_name: str | None = None,
    timestamp_as_text: bool = False,
) -> PageRequest:
    """The body a page POSTs to /v2/token/client-generate. `aad_timestamp_ms` encrypts under
    another timestamp than the one sent (a tampered request). An app (`app_name`, as the UID2
    Android and iOS SDKs send it) adds its name to the additional data: `[timestamp,"app"]`;
    `timestamp_as_text` sends the timestamp as a JSON string, as the Android SDK does."""
    spki = base64.b64decode(server_public_key[9:])
    server_key = serialization.load_der_public_key(spki)
    assert isinstance(server_key, ec.EllipticCurvePublicKey)
    mine = ec.generate_private_key(ec.SECP256R1())
    secret = mine.exchange(ec.ECDH(), server_key)
    now = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000
    aad_fields: list[Any] = [now if aad_timestamp_ms is None else aad_timestamp_ms]
    if app_name is not None:
        aad_fields.append(app_name)
    # Compact, as JSONArray.toString() (Android) and JSONEncoder (iOS) write it.
    aad = json.dumps(aad_fields, separators=(",", ":")).encode()
    iv = os.urandom(12)
    plain = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    ciphertext = AESGCM(secret).encrypt(iv, plain, aad)
    public = mine.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body: dict[str, Any] = {
        "payload": base64.b64encode(ciphertext).decode(),
        "iv": base64.b64encode(iv).decode(),
        "public_key": base64.b64encode(public).decode(),
        "timestamp": str(now) if timestamp_as_text else now,
        "subscription_id": subscription_id,
    }
    if app_name is not None:
        body["app_name"] = app_name
    return PageRequest(body, secret)


def post_page_request(
    base_url: str, request: PageRequest, origin: str, *, timeout_s: float = 10.0
) -> tuple[int, Any]:
    """POSTs the request as a page on `origin` would; (HTTP status, the opened answer on 200,
    else the error JSON)."""
    http = urllib.request.Request(  # noqa: S310  # the operator's URL, http or https
        base_url + "/v2/token/client-generate",
        data=request.encoded(),
        headers={"Origin": origin, "Content-Type": "text/plain"},
    )
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as resp:  # noqa: S310  # as above
            return resp.status, request.open_answer(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
