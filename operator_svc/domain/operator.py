"""The operator's domain, assembled: one object both front doors (the gRPC service and the
official HTTP API, operator_svc.http) call. Build it with `Operator.open(config, clock=, rng=)`
(loads all state into memory), then `start_sync()` and `start_rotation()` (scheduled key and
salt rotation, when the config asks for it); `close()` ends streams, the background threads and
the store. The clock and the randomness are always the caller's: the system ones are chosen at
the edge (server.create_server), never here, so tests can fix both.

- `operator.auth.authenticate(api_key) -> Client`; `require_role(client, *roles)`
- `operator.tokens.generate / refresh / validate`        (tokens.py)
- `operator.client_side.generate`                         (client_side.py: pages, no API key)
- `operator.mapper.map_identity`                          (mapping.py)
- `operator.optouts.opt_out / opt_out_status / watch`     (optout.py)
- `operator.keys.bidstream_keys / sharing_keys`           (keys_service.py)"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from operator_svc.config import OperatorConfig
from operator_svc.domain.auth import Authenticator
from operator_svc.domain.client_side import ClientSideGenerator
from operator_svc.domain.keys_service import KeyService
from operator_svc.domain.mapping import IdentityMapper
from operator_svc.domain.optout import OptOutService
from operator_svc.domain.rotation import Rotator
from operator_svc.domain.state import OperatorState, StateLoader, Syncer
from operator_svc.domain.tokens import TokenService
from operator_svc.store import OperatorStore
from svc_common.clock import Clock
from svc_common.sqlite_db import BUSY_TIMEOUT_S
from uid2_crypto.keys import MASTER_KEYSET_ID, REFRESH_KEYSET_ID

_log = structlog.get_logger("operator")


class Operator:
    def __init__(
        self,
        config: OperatorConfig,
        store: OperatorStore,
        *,
        clock: Clock,
        rng: Callable[[int], bytes],
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.rng = rng
        self._loader = StateLoader(store.reader())
        try:
            self.state: OperatorState = self._loader.load()
        except BaseException:
            self._loader.close()
            raise
        self.auth = Authenticator(self.state)
        self.tokens = TokenService(self.state, config, self.clock, self.rng)
        self.client_side = ClientSideGenerator(self.state, self.tokens, self.clock)
        self.mapper = IdentityMapper(self.state, self.clock)
        self.optouts = OptOutService(self.state, store, self.clock)
        self.keys = KeyService(self.state, config, self.clock)
        self._syncer: Syncer | None = None
        self._rotator: Rotator | None = None

    @classmethod
    def open(
        cls,
        config: OperatorConfig,
        *,
        clock: Clock,
        rng: Callable[[int], bytes],
        give_up: Callable[[], bool] = lambda: False,
    ) -> Operator:
        """`give_up`: a stop signal came during start-up; the operator that opens then serves
        nothing, so what it would record for the lifetimes it issues with may be skipped."""
        # `serve` ran quick_check before it got here; loading the state reads every row anyway.
        store = OperatorStore.open(config.data_dir, check=False)
        try:
            store.note_lifetimes(
                config.token_lifetime_s,
                config.refresh_lifetime_s,
                give_up=give_up,
                on_wait=lambda: _log.warning(
                    "waiting_for_store_lock", purpose="record_lifetimes", at_most_s=BUSY_TIMEOUT_S
                ),
            )
            return cls(config, store, clock=clock, rng=rng)
        except BaseException:
            store.close()
            raise

    def sync_now(self) -> list[str]:
        """Picks up other processes' writes at once (the sync thread does it periodically)."""
        return self._loader.sync(self.state)

    def start_sync(self) -> None:
        if self._syncer is None:
            self._syncer = Syncer(
                self._loader, self.state, self.config.sync_interval_s, self.clock
            ).start()

    def start_rotation(self) -> None:
        """Starts scheduled rotation when `rotate_keys_every_s` or `rotate_salts_daily_fraction`
        is set; it writes through this process's store connection, as an opt-out does."""
        config = self.config
        if self._rotator is None and (
            config.rotate_keys_every_s or config.rotate_salts_daily_fraction
        ):
            self._rotator = Rotator(self.store, config, clock=self.clock, rng=self.rng).start()

    def stop_rotation(self) -> None:
        """Starts no rotation from now on (a stop's drain has begun); one under way finishes."""
        if self._rotator is not None:
            self._rotator.begin_stop()

    def readings(self) -> dict[str, float]:
        """What /metrics shows of the operator's own state (svc_common.metrics)."""
        syncer, rotator, now_ms = self._syncer, self._rotator, self.clock.now_ms()
        return {
            "optouts": float(len(self.state.optouts)),
            "optout_streams_open": float(self.optouts.all_open_streams()),
            # Since this process last read the store for other processes' writes.
            "sync_age_seconds": (now_ms - syncer.last_ok_ms) / 1000 if syncer else float("nan"),
            "sync_failures": float(syncer.failures) if syncer else 0.0,
            # Scheduled rotation checks that failed in a row (0 when it is off).
            "rotation_failures": float(rotator.failures) if rotator else 0.0,
            **self._freshness(now_ms),
        }

    def _freshness(self, now_ms: int) -> dict[str, float]:
        """What goes stale when nobody runs `keys rotate` or `salts rotate`, with no error on
        any call until the day the keys run out (a salt past its refresh time only breaks
        the re-map date identity-map callers were given). Cheap at every scrape: a few keys,
        and the salts' earliest due time, scanned once per salt set."""
        ring, now_s = self.state.keys.keyring, now_ms / 1000
        master = ring.keyset_keys(MASTER_KEYSET_ID)
        # Every token needs an active master key and an active refresh key (tokens.py).
        run_out_s = min(
            ring.active_until(keyset_id, now_ms // 1000)
            for keyset_id in (MASTER_KEYSET_ID, REFRESH_KEYSET_ID)
        )
        return {
            # Since `init` or the last `keys rotate` (each adds a master key).
            "master_key_newest_age_seconds": (
                now_s - max(k.created for k in master) if master else float("nan")
            ),
            # 0: no token can be issued now (NO_ACTIVE_KEY).
            "token_keys_run_out_in_seconds": max(0.0, run_out_s - now_s),
            # Negative: the first bucket comes due in that many seconds.
            "salts_refresh_overdue_seconds": (now_ms - self.state.salts.first_due_ms()) / 1000,
        }

    def close_streams(self) -> None:
        """Ends every WatchOptOuts stream (first step of a graceful stop)."""
        self.state.optouts.close()

    def close(self) -> None:
        self.close_streams()
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        if self._rotator is not None:
            self._rotator.stop()  # a rotation under way commits (and logs) first
            self._rotator = None
        self._loader.close()
        self.store.close()
