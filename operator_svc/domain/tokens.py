"""Generate, refresh and validate identities (reference §4, §7).

Entry points on `TokenService(state, config, clock, rng)`:
- `generate(client, kind, value, privacy, on_behalf_of_site_id=0) -> GenerateOutcome`
  (GENERATOR role; opt-out and refused consent are outcomes, not errors);
- `generate_client_side(site_id, kind, value) -> GenerateOutcome` (a page checked by
  client_side.py: no API key);
- `refresh(refresh_token) -> RefreshOutcome` (no client: the token is the credential);
- `validate(client, token, kind, value) -> bool` (GENERATOR role; the caller's site's tokens).

Advertising tokens are v4 under the active master key and the site's active key (the fallback
keyset's when the site has none); refresh tokens are under the active refresh key and carry the
first-level hash, so a refresh recomputes the raw UID2 with the bucket's current salt and keeps
the site and the established time."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from operator_svc.config import OperatorConfig
from operator_svc.domain.auth import require_role
from operator_svc.domain.dii import dii_flh
from operator_svc.domain.privacy import (
    PRIVACY_BITS_CLIENT_SIDE,
    PRIVACY_BITS_DEFAULT,
    Privacy,
    consent_allows_token,
)
from operator_svc.domain.state import Client, KeySnapshot, OperatorState
from svc_common.clock import Clock
from svc_common.errors import invalid_argument, permission_denied, unavailable
from uid2_crypto.identity import IdentityType
from uid2_crypto.keys import FALLBACK_SITE_ID, MASTER_KEYSET_ID, REFRESH_KEYSET_ID, Key
from uid2_crypto.refresh import (
    RefreshDecodeStatus,
    RefreshPayload,
    decode_refresh_token,
    encode_refresh_token,
)
from uid2_crypto.salts import bucket_index, raw_uid2
from uid2_crypto.tokens import (
    ClientType,
    TokenDecoder,
    TokenPayload,
    encode_advertising_token_v4,
)

# The operator's own identity inside tokens (informational for decryptors).
OPERATOR_SITE_ID = 1
OPERATOR_VERSION = 1
MAX_TOKEN_CHARS = 2048


@dataclass(frozen=True)
class IdentityTokens:
    """What a publisher keeps. Times are epoch milliseconds. The tokens and the response key
    are credentials for the user's identity, so they stay out of repr (and any log line)."""

    advertising_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    identity_expires: int
    refresh_from: int
    refresh_expires: int
    refresh_response_key: str = field(repr=False)


class GenerateStatus(Enum):
    SUCCESS = "success"
    OPTOUT = "optout"
    INSUFFICIENT_CONSENT = "insufficient_consent"


class RefreshStatus(Enum):
    SUCCESS = "success"
    OPTOUT = "optout"
    EXPIRED_TOKEN = "expired_token"  # noqa: S105 - a status name
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a status name


@dataclass(frozen=True)
class GenerateOutcome:
    status: GenerateStatus
    identity: IdentityTokens | None = None
    site_id: int = 0


@dataclass(frozen=True)
class RefreshOutcome:
    status: RefreshStatus
    identity: IdentityTokens | None = None
    site_id: int = 0
    # The refresh_response_key carried by the presented token (what the caller holds to read
    # the HTTP API's answer); "" when the token did not decode.
    response_key: str = field(default="", repr=False)


class TokenService:
    def __init__(
        self,
        state: OperatorState,
        config: OperatorConfig,
        clock: Clock,
        rng: Callable[[int], bytes],
    ) -> None:
        self._state = state
        self._clock = clock
        self._rng = rng
        self._token_ms = config.token_lifetime_s * 1000
        self._refresh_ms = config.refresh_lifetime_s * 1000
        self._refresh_from_ms = config.refresh_from_s * 1000
        self._skew_s = config.allow_clock_skew_s
        self._decoder: tuple[KeySnapshot, TokenDecoder] | None = None

    # -- helpers ---------------------------------------------------------------------------

    def _is_opted_out(self, flh: bytes) -> bool:
        tests = self._state.test_identities
        if flh in tests.always_optout:
            return True
        if flh in tests.never_optout:
            return False
        return self._state.optouts.opted_out_at(flh) is not None

    def _keys_for(self, site_id: int, now_s: int) -> tuple[Key, Key, Key]:
        snap = self._state.keys
        ring = snap.keyring
        master = ring.active_key(MASTER_KEYSET_ID, now_s)
        refresh = ring.active_key(REFRESH_KEYSET_ID, now_s)
        site_key = None
        keyset_id = snap.default_keyset.get(site_id)
        if keyset_id is not None:
            site_key = ring.active_key(keyset_id, now_s)
        if site_key is None:
            fallback = snap.default_keyset.get(FALLBACK_SITE_ID)
            if fallback is not None:
                site_key = ring.active_key(fallback, now_s)
        if master is None or refresh is None or site_key is None:
            raise unavailable("NO_ACTIVE_KEY", "the operator has no active key; rotate keys")
        return master, site_key, refresh

    def _issue(
        self,
        *,
        flh: bytes,
        identity_type: IdentityType,
        site_id: int,
        client_key_id: int,
        privacy_bits: int,
        established_ms: int,
    ) -> IdentityTokens:
        state = self._state
        now = self._clock.now_ms()
        master, site_key, refresh_key = self._keys_for(site_id, now // 1000)
        raw = raw_uid2(flh, state.salts.salt(bucket_index(flh)))
        # No token outlives a key that encrypted it: decryptors drop an expired key, and the
        # operator prunes it, so such a token would stop decrypting (or refreshing) before the
        # expiry it states. Only keys near their run-out (no rotation in time) shorten tokens:
        # a rotation keeps the key it supersedes for a whole token lifetime past its last use.
        refresh_expires = min(now + self._refresh_ms, _last_ms(refresh_key))
        expires = min(now + self._token_ms, _last_ms(master), _last_ms(site_key), refresh_expires)
        payload = TokenPayload(
            raw_uid=raw,
            identity_type=identity_type,
            identity_scope=state.identity_scope,
            site_id=site_id,
            publisher_id=0,
            client_key_id=client_key_id,
            privacy_bits=privacy_bits,
            established_ms=established_ms,
            refreshed_ms=now,
            created_ms=now,
            expires_ms=expires,
            operator_site_id=OPERATOR_SITE_ID,
            operator_version=OPERATOR_VERSION,
            operator_key_id=0,
        )
        advertising = encode_advertising_token_v4(payload, master, site_key, self._rng)
        refresh_token, response_key = encode_refresh_token(
            RefreshPayload(
                expires_ms=refresh_expires,
                created_ms=now,
                operator_site_id=OPERATOR_SITE_ID,
                site_id=site_id,
                publisher_id=0,
                client_key_id=client_key_id,
                privacy_bits=privacy_bits,
                established_ms=established_ms,
                identity_type=identity_type,
                identity_scope=state.identity_scope,
                first_level_hash=flh,
            ),
            refresh_key,
            self._rng,
        )
        return IdentityTokens(
            advertising_token=advertising,
            refresh_token=refresh_token,
            identity_expires=expires,
            refresh_from=min(now + self._refresh_from_ms, expires),
            refresh_expires=refresh_expires,
            refresh_response_key=response_key,
        )

    # -- entry points ----------------------------------------------------------------------

    def generate(
        self,
        client: Client,
        kind: str,
        value: str,
        privacy: Privacy,
        on_behalf_of_site_id: int = 0,
    ) -> GenerateOutcome:
        """One DII -> an identity for the caller's site, or for `on_behalf_of_site_id` when
        that site granted the caller a delegation (else PERMISSION_DENIED)."""
        require_role(client, "GENERATOR")
        site_id = client.site_id
        if on_behalf_of_site_id < 0:
            raise invalid_argument("INVALID_SITE_ID", "on_behalf_of_site_id must not be negative")
        if on_behalf_of_site_id and on_behalf_of_site_id != client.site_id:
            if (on_behalf_of_site_id, client.name) not in self._state.delegations:
                raise permission_denied(
                    "NO_DELEGATION", "that site has not delegated token generation to the caller"
                )
            site_id = on_behalf_of_site_id
        identity_type, flh = dii_flh(kind, value, self._state.first_level_salt)
        if not consent_allows_token(privacy):
            return GenerateOutcome(GenerateStatus.INSUFFICIENT_CONSENT, site_id=site_id)
        return self._new_identity(
            flh, identity_type, site_id, client.client_id, PRIVACY_BITS_DEFAULT
        )

    def generate_client_side(self, site_id: int, kind: str, value: str) -> GenerateOutcome:
        """An identity for a page of `site_id` (client_side.py has checked the page): marked
        client-side generated, so decryptors check the domain or app it is used on. The page
        collects consent itself; an opted-out user gets OPTOUT and no token."""
        identity_type, flh = dii_flh(kind, value, self._state.first_level_salt)
        return self._new_identity(flh, identity_type, site_id, 0, PRIVACY_BITS_CLIENT_SIDE)

    def _new_identity(
        self,
        flh: bytes,
        identity_type: IdentityType,
        site_id: int,
        client_key_id: int,
        privacy_bits: int,
    ) -> GenerateOutcome:
        """A first identity for the user (established now), or OPTOUT without one."""
        if self._is_opted_out(flh):
            return GenerateOutcome(GenerateStatus.OPTOUT, site_id=site_id)
        identity = self._issue(
            flh=flh,
            identity_type=identity_type,
            site_id=site_id,
            client_key_id=client_key_id,
            privacy_bits=privacy_bits,
            established_ms=self._clock.now_ms(),
        )
        return GenerateOutcome(GenerateStatus.SUCCESS, identity, site_id)

    def refresh(self, refresh_token: str) -> RefreshOutcome:
        """A refresh token -> a new identity with the same site and established time."""
        if not refresh_token or len(refresh_token) > MAX_TOKEN_CHARS:
            return RefreshOutcome(RefreshStatus.INVALID_TOKEN)
        state = self._state
        status, payload, key = decode_refresh_token(refresh_token, state.keys.keyring)
        if status is not RefreshDecodeStatus.OK or payload is None or key is None:
            return RefreshOutcome(RefreshStatus.INVALID_TOKEN)
        if payload.identity_scope is not state.identity_scope:
            return RefreshOutcome(RefreshStatus.INVALID_TOKEN)
        now = self._clock.now_ms()
        if payload.expires_ms < now:
            return RefreshOutcome(
                RefreshStatus.EXPIRED_TOKEN, site_id=payload.site_id, response_key=key
            )
        flh = payload.first_level_hash
        if flh in state.test_identities.refresh_optout or self._is_opted_out(flh):
            return RefreshOutcome(RefreshStatus.OPTOUT, site_id=payload.site_id, response_key=key)
        identity = self._issue(
            flh=flh,
            identity_type=payload.identity_type,
            site_id=payload.site_id,
            client_key_id=payload.client_key_id,
            privacy_bits=payload.privacy_bits,
            established_ms=payload.established_ms,
        )
        return RefreshOutcome(RefreshStatus.SUCCESS, identity, payload.site_id, key)

    def _token_decoder(self) -> TokenDecoder:
        snap = self._state.keys
        cached = self._decoder
        if cached is not None and cached[0] is snap:
            return cached[1]
        decoder = TokenDecoder(
            snap.keyring,
            allow_clock_skew_s=self._skew_s,
            max_bidstream_lifetime_s=None,
            max_sharing_lifetime_s=None,
        )
        self._decoder = (snap, decoder)
        return decoder

    def validate(self, client: Client, token: str, kind: str, value: str) -> bool:
        """True when `token` decrypts, was issued for the caller's site, and carries the
        DII's current raw UID2."""
        require_role(client, "GENERATOR")
        state = self._state
        _, flh = dii_flh(kind, value, state.first_level_salt)
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise invalid_argument("INVALID_TOKEN", "the token is empty or too long")
        # As sharing: no check of where a client-side generated token is used (there is no
        # "where" here), which as a bid-stream token would fail it and answer false.
        result = self._token_decoder().decrypt(
            token, self._clock.now_ms(), client_type=ClientType.SHARING
        )
        if not result.success or result.site_id != client.site_id or result.raw_uid is None:
            return False
        expected = raw_uid2(flh, state.salts.salt(bucket_index(flh)))
        return base64.b64encode(expected).decode("ascii") == result.raw_uid


def _last_ms(key: Key) -> int:
    """The last millisecond `key` is published and held (epoch ms): it goes at its expiry."""
    return key.expires * 1000 - 1
