"""Client-side token generation (CSTG): the crypto of `POST /v2/token/client-generate`, as the
official UID2 web SDKs and Prebid.js speak it.

The page holds the operator's public key (`UID2-X-P-` + base64 of a P-256 SubjectPublicKeyInfo)
and a subscription id. It makes a P-256 key pair of its own; the ECDH shared secret (the raw
32-byte x coordinate, which WebCrypto's `deriveKey` to AES-GCM-256 uses as is) keys AES-256-GCM
both ways:

- request: `payload` = AES-GCM(secret, iv, AAD = UTF-8 of the JSON array `[timestamp]`, or
  `[timestamp,"app name"]` from an app) of the JSON `{"email_hash": ...}` or
  `{"phone_hash": ...}`, sent as base64 with the iv, the page's public key (base64 SPKI), the
  timestamp and (an app) its app_name;
- answer: base64 of iv(12) ‖ AES-GCM(secret, iv, no AAD) of the JSON answer.

Nothing here knows HTTP or the operator's state; failures are `ClientSideError` with a reason."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_IV = 12
_TAG = 16
# Nine characters the SDKs strip before importing the key ("UID2-X-P-"): scope, "X" for the
# client-side key type, the environment letter (P: production, as the official operator's keys).
PUBLIC_KEY_MARKER = "-X-P-"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# A P-256 SPKI is 91 bytes; anything much longer is not one.
_MAX_PUBLIC_KEY_B64 = 256


class ClientSideError(ValueError):
    """A request that cannot be opened; `reason` is UPPER_SNAKE for logs and error details."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ServerKeypair:
    """The operator's side of one subscription: its private key never leaves the operator."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> ServerKeypair:
        """A new key pair from `rng` (40 bytes, reduced mod the group order: bias < 2^-64)."""
        scalar = int.from_bytes(rng(40), "big") % (_P256_ORDER - 1) + 1
        return cls(ec.derive_private_key(scalar, ec.SECP256R1()))

    @classmethod
    def from_der(cls, der: bytes) -> ServerKeypair:
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("a client-side key pair must be P-256")
        return cls(key)

    def private_der(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_key_text(self, scope: str) -> str:
        """What a publisher puts in its page: `UID2-X-P-<base64 SPKI>` (`EUID-...` for EUID)."""
        spki = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return scope + PUBLIC_KEY_MARKER + base64.b64encode(spki).decode("ascii")

    def shared_secret(self, client_public_key_b64: str) -> bytes:
        """The AES-256 key both sides derive; ClientSideError BAD_PUBLIC_KEY if the page's key
        is not a base64 P-256 SubjectPublicKeyInfo."""
        if len(client_public_key_b64) > _MAX_PUBLIC_KEY_B64:
            raise ClientSideError("BAD_PUBLIC_KEY", "bad public key")
        try:
            der = _b64decode(client_public_key_b64)
            peer = serialization.load_der_public_key(der)
        except (ValueError, TypeError, binascii.Error):
            raise ClientSideError("BAD_PUBLIC_KEY", "bad public key") from None
        if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != "secp256r1":
            raise ClientSideError("BAD_PUBLIC_KEY", "bad public key")
        return self.private_key.exchange(ec.ECDH(), peer)


def _b64decode(text: str) -> bytes:
    return binascii.a2b_base64(text.strip().encode("ascii"), strict_mode=True)


def timestamp_aad(timestamp_ms: int) -> bytes:
    """The request's additional data: `JSON.stringify([timestamp])` as the SDKs send it."""
    return b"[" + str(timestamp_ms).encode("ascii") + b"]"


def request_aad(timestamp_ms: int, app_name: str | None) -> bytes:
    """The request's additional data: `[timestamp]` from a page, `[timestamp,"app name"]` from
    an app (the UID2 Android and iOS SDKs seal their app name so), compact JSON as the official
    operator builds it (`JsonArray.of(timestamp).add(appName)`)."""
    if app_name is None:
        return timestamp_aad(timestamp_ms)
    return json.dumps([timestamp_ms, app_name], separators=(",", ":"), ensure_ascii=False).encode()


def open_payload(
    secret: bytes, iv_b64: str, payload_b64: str, timestamp_ms: int, app_name: str | None = None
) -> bytes:
    """The decrypted request payload; ClientSideError BAD_IV or BAD_PAYLOAD. `app_name`: the
    request's, exactly as sent (it is part of the additional data)."""
    try:
        iv = _b64decode(iv_b64)
    except (ValueError, binascii.Error):
        raise ClientSideError("BAD_IV", "bad iv") from None
    if len(iv) != _IV:
        raise ClientSideError("BAD_IV", "bad iv")
    try:
        sealed = _b64decode(payload_b64)
        if len(sealed) < _TAG:
            raise ValueError("too short")
        return AESGCM(secret).decrypt(iv, sealed, request_aad(timestamp_ms, app_name))
    except (ValueError, binascii.Error, InvalidTag):
        raise ClientSideError("BAD_PAYLOAD", "payload decryption failed") from None


def seal_answer(secret: bytes, answer: bytes, rng: Callable[[int], bytes]) -> str:
    """base64 of iv ‖ AES-GCM(secret, iv) of the answer, as the SDKs decrypt it."""
    iv = rng(_IV)
    return base64.b64encode(iv + AESGCM(secret).encrypt(iv, answer, None)).decode("ascii")
