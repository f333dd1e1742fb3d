"""The API key a call carries as `authorization: Bearer <key>` (gRPC metadata or an HTTP
header): one reading for every front door."""

from __future__ import annotations

from collections.abc import Iterable

from svc_common.errors import unauthenticated


def bearer_key(values: Iterable[str]) -> str | None:
    """The key of the call's `authorization` values; None when there is none. Refused
    (UNAUTHENTICATED): one that is not `Bearer <key>` (MALFORMED_AUTHORIZATION, so a key sent
    without its scheme is not reported missing), and two or more keys (AMBIGUOUS_API_KEY):
    which one a proxy or a library puts first is nobody's to guess, and trying each would let
    a caller probe keys with a valid one beside them. The same key twice (a proxy repeating
    the header) is one. Messages never repeat a value."""
    keys = {_bearer(value) for value in values}
    if len(keys) > 1:
        raise unauthenticated("AMBIGUOUS_API_KEY", "send one authorization header, not several")
    if not keys:
        return None
    (key,) = keys
    if key is None:
        raise unauthenticated("MALFORMED_AUTHORIZATION", "authorization must be: Bearer <api key>")
    return key


def _bearer(value: str) -> str | None:
    """The key of one `Bearer <key>` value (any whitespace after the scheme); None for any
    other shape."""
    parts = value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1].strip():
        return None
    return parts[1].strip()
