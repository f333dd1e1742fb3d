"""Key containers for decryptors (reference §5).

Entry points on `KeyService(state, config, clock)`: `bidstream_keys(client)` (ID_READER) and
`sharing_keys(client)` (SHARER or ID_READER), each -> `uid2_crypto.keys.PublishedKeys`, which
the HTTP API renders as the official key JSON and the gRPC servicer as a proto. Master keys
always, the caller's own keysets, keysets that list the caller's site, and unlisted keysets for
ID_READERs; never refresh keys; expired (pruned) keys never."""

from __future__ import annotations

from operator_svc.config import OperatorConfig
from operator_svc.domain.auth import ADMIN, require_role
from operator_svc.domain.state import Client, OperatorState
from svc_common.clock import Clock
from uid2_crypto.keys import FALLBACK_SITE_ID, ID_READER_ROLE, PublishedKeys, keys_for_caller


class KeyService:
    def __init__(self, state: OperatorState, config: OperatorConfig, clock: Clock) -> None:
        self._state = state
        self._config = config
        self._clock = clock

    def _container(self, client: Client, *, sharing: bool) -> PublishedKeys:
        state = self._state
        snap = state.keys
        roles = client.roles | {ID_READER_ROLE} if ADMIN in client.roles else client.roles
        keys = keys_for_caller(
            snap.keyring, snap.keysets, client.site_id, roles, self._clock.now_ms() // 1000
        )
        default_keyset = snap.default_keyset.get(
            client.site_id, snap.default_keyset.get(FALLBACK_SITE_ID, 0)
        )
        cfg = self._config
        site_data = tuple(
            (s.site_id, tuple(s.domains), tuple(s.app_names))
            for s in state.sites.values()
            if s.domains or s.app_names
        )
        return PublishedKeys(
            caller_site_id=client.site_id,
            default_keyset_id=default_keyset,
            keys=tuple(keys),
            site_data=site_data,
            identity_scope=state.identity_scope.name,
            token_expiry_seconds=(cfg.max_sharing_lifetime_s if sharing else cfg.token_lifetime_s),
            allow_clock_skew_seconds=cfg.allow_clock_skew_s,
            # Unless set, as long as any token this store's serves issued may live: a serve
            # restarted with a shorter --token-lifetime must not void the tokens out there.
            max_bidstream_lifetime_seconds=cfg.max_bidstream_lifetime_s
            or max(cfg.token_lifetime_s, snap.longest_token_lifetime_s),
            max_sharing_lifetime_seconds=cfg.max_sharing_lifetime_s,
        )

    def bidstream_keys(self, client: Client) -> PublishedKeys:
        require_role(client, "ID_READER")
        return self._container(client, sharing=False)

    def sharing_keys(self, client: Client) -> PublishedKeys:
        require_role(client, "SHARER", "ID_READER")
        return self._container(client, sharing=True)
