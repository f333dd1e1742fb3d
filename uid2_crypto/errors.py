"""Exceptions raised by uid2_crypto.

Messages are deliberately generic: callers log them, and the inputs are DII, hashes or secrets.
"""

from __future__ import annotations

IDENTIFIER_REASONS = frozenset(
    {"INVALID_EMAIL", "INVALID_PHONE", "INVALID_EMAIL_HASH", "INVALID_PHONE_HASH"}
)

_MESSAGES = {
    "INVALID_EMAIL": "invalid email address",
    "INVALID_PHONE": "phone number is not E.164",
    "INVALID_EMAIL_HASH": "invalid email hash",
    "INVALID_PHONE_HASH": "invalid phone hash",
}


class InvalidIdentifierError(ValueError):
    """A DII or DII hash that cannot be normalised; ``reason`` says which kind."""

    def __init__(self, reason: str) -> None:
        if reason not in IDENTIFIER_REASONS:
            raise ValueError("unknown identifier error reason")
        super().__init__(_MESSAGES[reason])
        self.reason = reason


class KeyContainerError(ValueError):
    """A key-container JSON body that does not have the documented shape."""


class EnvelopeError(ValueError):
    """An HTTP API envelope that cannot be opened; ``reason`` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
