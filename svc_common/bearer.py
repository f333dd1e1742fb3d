"""The API key a call carries as `authorization: Bearer <key>` (gRPC metadata or an HTTP
header): one reading for every front door."""

from __future__ import annotations

from collections.abc import Iterable

from svc_common.errors import unauthenticated


def bearer_key(values: Iterable[str]) -> str | None:
    """The key of the call's `authorization` values; None when there is none. Refused
    (UNAUTHENTICATED): one that is not `Bearer <key>` (MALFORMED_AUTHORIZATION, so a key sent
    without its scheme is not reported missing), and two or more (AMBIGUOUS_API_KEY): which
    one a proxy or a library puts first is nobody's to guess, and trying each would let a
    caller probe keys with a valid one beside them. Messages never repeat the value."""
    # A proxy may repeat the header: the same value twice is not ambiguous.
    given = list(dict.fromkeys(values))
    if len(given) > 1:
        raise unauthenticated("AMBIGUOUS_API_KEY", "send one authorization header, not several")
    if not given:
        return None
    scheme, _, token = given[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("MALFORMED_AUTHORIZATION", "authorization must be: Bearer <api key>")
    return token.strip()
