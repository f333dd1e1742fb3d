"""Who is calling, and may they: API-key authentication and role checks.

Entry points: `Authenticator(state).authenticate(api_key) -> Client` (ServiceError
UNAUTHENTICATED for a missing, unknown or disabled key) and `require_role(client, *roles)`
(ServiceError PERMISSION_DENIED unless the client holds one of `roles`; ADMIN holds all).

API keys look like `UID2-C-<key_id>-<secret>`: `key_id` finds the client row in O(1), the whole
key is checked against the row's salted SHA-256 with a constant-time compare. Keys are 32 random
bytes, so a fast hash is enough; only the hash is stored."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from operator_svc.domain.api_keys import api_key_id, hash_api_key
from operator_svc.domain.state import Client, OperatorState
from svc_common.errors import permission_denied, unauthenticated

ADMIN = "ADMIN"


class Authenticator:
    def __init__(self, state: OperatorState) -> None:
        self._state = state

    def authenticate(
        self, api_key: str | None, known: Callable[[Client], None] | None = None
    ) -> Client:
        """The client whose key this is. `known` is called with it once the key matches, before
        it is refused as disabled: the caller's log line then says whose key was refused."""
        if not api_key:
            raise unauthenticated("MISSING_API_KEY", "an API key is required")
        key_id = api_key_id(api_key)
        client = self._state.clients.get(key_id) if key_id else None
        if client is None or not hmac.compare_digest(
            hash_api_key(client.key_salt, api_key), client.key_hash
        ):
            raise unauthenticated("INVALID_API_KEY", "the API key is not valid")
        if known is not None:
            known(client)
        if client.disabled:
            raise unauthenticated("CLIENT_DISABLED", "the API key is disabled")
        return client


def has_role(client: Client, *roles: str) -> bool:
    """Whether the client holds one of `roles` (ADMIN holds all)."""
    return ADMIN in client.roles or any(r in client.roles for r in roles)


def require_role(client: Client, *roles: str) -> None:
    if has_role(client, *roles):
        return
    raise permission_denied("MISSING_ROLE", f"this call needs the {' or '.join(roles)} role")
