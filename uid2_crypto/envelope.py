"""The official HTTP API's encrypted envelope (reference §8).

Request:  0x01 ‖ iv(12) ‖ AES-256-GCM(client secret) of timestamp ms(8) ‖ nonce(8) ‖ payload
          ‖ tag(16). Response: the same without the version byte, echoing the request's nonce.
Callers base64 the bytes; checking the timestamp window and the echoed nonce is theirs to do.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from uid2_crypto.errors import EnvelopeError

__all__ = [
    "ENVELOPE_VERSION",
    "EnvelopeError",
    "decrypt_request",
    "decrypt_response",
    "encrypt_request",
    "encrypt_response",
]

ENVELOPE_VERSION = 1
_IV = 12
_TAG = 16
_NONCE = 8
_TS = struct.Struct(">Q")
_PREFIX = _TS.size + _NONCE


def _seal(secret: bytes, payload: bytes, now_ms: int, nonce: bytes, iv: bytes) -> bytes:
    if len(nonce) != _NONCE or len(iv) != _IV:
        raise ValueError("envelope nonce must be 8 bytes and iv 12 bytes")
    plain = _TS.pack(now_ms) + nonce + payload
    return iv + AESGCM(secret).encrypt(iv, plain, None)


def _open(secret: bytes, data: bytes) -> tuple[int, bytes, bytes]:
    if len(data) < _IV + _PREFIX + _TAG:
        raise EnvelopeError("TOO_SHORT")
    try:
        plain = AESGCM(secret).decrypt(data[:_IV], data[_IV:], None)
    except InvalidTag:
        raise EnvelopeError("BAD_CIPHERTEXT") from None
    except ValueError:  # a secret of the wrong size
        raise EnvelopeError("BAD_KEY") from None
    return _TS.unpack_from(plain)[0], plain[_TS.size : _PREFIX], plain[_PREFIX:]


def encrypt_request(
    secret: bytes, payload: bytes, *, now_ms: int, nonce: bytes, iv: bytes
) -> bytes:
    return bytes((ENVELOPE_VERSION,)) + _seal(secret, payload, now_ms, nonce, iv)


def decrypt_request(secret: bytes, envelope: bytes) -> tuple[int, bytes, bytes]:
    """(timestamp ms, nonce(8), payload); raises EnvelopeError."""
    if not envelope:
        raise EnvelopeError("TOO_SHORT")
    if envelope[0] != ENVELOPE_VERSION:
        raise EnvelopeError("BAD_VERSION")
    return _open(secret, envelope[1:])


def encrypt_response(
    secret: bytes, payload: bytes, *, now_ms: int, nonce: bytes, iv: bytes
) -> bytes:
    return _seal(secret, payload, now_ms, nonce, iv)


def decrypt_response(secret: bytes, data: bytes) -> tuple[int, bytes, bytes]:
    """(timestamp ms, nonce(8), payload); raises EnvelopeError."""
    return _open(secret, data)
