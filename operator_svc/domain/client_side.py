"""Client-side token generation (CSTG): a publisher's page, holding only a subscription id and
the operator's public key, asks for an identity for its user (`POST /v2/token/client-generate`,
as Prebid.js and the official UID2 SDKs call it). There is no API key: what stands in for it is
where the request comes from. A page must be on one of the site's domains (the HTTP `Origin`),
an app must be one of the site's app names, and the tokens it gets are marked client-side
generated, so decryptors check the domain or app they are used on as well.

`ClientSideGenerator(state, tokens, clock).generate(request) -> (shared secret, outcome)`; the
HTTP front door seals the answer under that secret (uid2_crypto.client_side.seal_answer).
Refusals are ServiceErrors: INVALID_ARGUMENT (BAD_SUBSCRIPTION_ID, BAD_PUBLIC_KEY, BAD_IV,
BAD_PAYLOAD, MISSING_DII, MULTIPLE_DII, INVALID_EMAIL_HASH, REQUEST_TOO_OLD, ...), UNAUTHENTICATED
(SUBSCRIPTION_DISABLED) or PERMISSION_DENIED (INVALID_HTTP_ORIGIN, INVALID_APP_NAME)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from operator_svc.domain.state import Keypair, OperatorState
from operator_svc.domain.tokens import GenerateOutcome, TokenService
from svc_common import json_text
from svc_common.clock import Clock
from svc_common.errors import invalid_argument, permission_denied, unauthenticated
from svc_common.names import domain_allowed, normalise_domain
from uid2_crypto.client_side import ClientSideError, open_payload

# The encrypted payload is one hash in a small JSON object: a few hundred bytes at most.
MAX_PAYLOAD_CHARS = 4096
_HASH_KINDS = ("email_hash", "phone_hash")
# A request whose timestamp is a minute or more from the operator's clock is refused, as the
# official operator refuses it (Duration.toMinutes() >= 1): a request captured on its way is
# not good for minting identities for that user forever after.
MAX_REQUEST_AGE_MS = 59_999
REQUEST_TOO_OLD = "REQUEST_TOO_OLD"


@dataclass(frozen=True)
class ClientSideRequest:
    """The request as the page sent it (its JSON body's fields), plus where it came from."""

    subscription_id: str
    # The encrypted DII: never in repr.
    payload: str = field(repr=False)
    iv: str
    public_key: str
    timestamp_ms: int
    # The HTTP Origin header (a page) or the body's app_name (an app); None when absent.
    origin: str | None = None
    app_name: str | None = None


def origin_host(origin: str | None) -> str | None:
    """The host of an Origin header (`https://news.example.com:8443` -> news.example.com), as
    site domains are stored; None when there is none (absent, "null", not a URL)."""
    if not origin:
        return None
    try:
        host = urlsplit(origin.strip()).hostname
        return normalise_domain(host) if host else None
    except ValueError:
        return None


class ClientSideGenerator:
    def __init__(self, state: OperatorState, tokens: TokenService, clock: Clock) -> None:
        self._state = state
        self._tokens = tokens
        self._clock = clock

    def site_of(self, subscription_id: str) -> int | None:
        """The site a subscription belongs to (for log lines, refused requests' too)."""
        keypair = self._state.keypairs.get(subscription_id)
        return None if keypair is None else keypair.site_id

    def _keypair(self, subscription_id: str) -> Keypair:
        keypair = self._state.keypairs.get(subscription_id)
        if keypair is None:
            raise invalid_argument("BAD_SUBSCRIPTION_ID", "bad subscription_id")
        if keypair.disabled:
            # UNAUTHENTICATED: the HTTP API's 401 unauthorized, as the official operator answers.
            raise unauthenticated("SUBSCRIPTION_DISABLED", "this subscription_id is disabled")
        return keypair

    def _check_source(self, keypair: Keypair, request: ClientSideRequest) -> None:
        site = self._state.sites.get(keypair.site_id)
        if request.app_name is not None:
            apps = {a.lower() for a in site.app_names} if site else set()
            if request.app_name.strip().lower() not in apps:
                raise permission_denied("INVALID_APP_NAME", "unexpected app name")
            return
        host = origin_host(request.origin)
        if host is None or site is None or not domain_allowed(host, site.domains):
            raise permission_denied("INVALID_HTTP_ORIGIN", "unexpected http origin")

    def generate(self, request: ClientSideRequest) -> tuple[bytes, GenerateOutcome]:
        """The shared secret the answer is sealed with, and the outcome (SUCCESS or OPTOUT)."""
        keypair = self._keypair(request.subscription_id)
        self._check_source(keypair, request)
        if abs(self._clock.now_ms() - request.timestamp_ms) > MAX_REQUEST_AGE_MS:
            raise invalid_argument(
                REQUEST_TOO_OLD, "invalid timestamp: request too old or client time drift"
            )
        if len(request.payload) > MAX_PAYLOAD_CHARS:
            raise invalid_argument("BAD_PAYLOAD", "payload decryption failed")
        try:
            secret = keypair.server.shared_secret(request.public_key)
            plain = open_payload(
                secret, request.iv, request.payload, request.timestamp_ms, request.app_name
            )
        except ClientSideError as exc:
            raise invalid_argument(exc.reason, str(exc)) from None
        kind, value = _hash_of(plain)
        return secret, self._tokens.generate_client_side(keypair.site_id, kind, value)


def _hash_of(plain: bytes) -> tuple[str, str]:
    """(kind, value) of the decrypted payload: exactly one of email_hash, phone_hash."""
    try:
        fields = json_text.loads(plain)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise invalid_argument("BAD_PAYLOAD", "encrypted payload contains invalid json")
    present = [k for k in _HASH_KINDS if fields.get(k) is not None]
    if len(present) != 1:
        raise invalid_argument(
            "MISSING_DII" if not present else "MULTIPLE_DII",
            "please provide exactly one of: email_hash, phone_hash",
        )
    value = fields[present[0]]
    if not isinstance(value, str):
        raise invalid_argument("BAD_PAYLOAD", f"{present[0]} must be a string")
    return present[0], value
