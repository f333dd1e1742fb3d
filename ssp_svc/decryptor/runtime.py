"""Wires the decryptor side for a service with operator ID_READER credentials: key cache and
its refresher, opt-out set and its watcher, and the token checker over them."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from ssp_svc.decryptor.checker import TokenChecker
from ssp_svc.decryptor.key_cache import KeyCache, KeyRefresher
from ssp_svc.decryptor.operator_client import OperatorClient
from ssp_svc.decryptor.optouts import OptOutSet, OptOutWatcher
from svc_common.clock import Clock

_log = structlog.get_logger("decryptor")


@dataclass
class Decryptor:
    checker: TokenChecker
    keys: KeyCache
    optouts: OptOutSet
    refresher: KeyRefresher
    watcher: OptOutWatcher
    client: OperatorClient

    def stop(self) -> None:
        self.watcher.stop()
        self.refresher.stop()
        self.client.close()


def start_decryptor(
    operator: str,
    api_key: str,
    clock: Clock,
    *,
    key_refresh_s: float = 3600.0,
    early_refresh_min_s: float = 1.0,
    connect_wait_s: float = 1.0,
) -> Decryptor:
    """Fetches keys once before returning (so the service starts decrypting), then keeps them
    and the opt-outs fresh on background threads. A failed first fetch is retried there."""
    client = OperatorClient(operator, api_key)
    keys = KeyCache(
        client.get_bidstream_keys,
        clock,
        interval_s=key_refresh_s,
        early_min_interval_s=early_refresh_min_s,
    )
    if not keys.refresh():
        _log.warning("keys_unavailable_at_start")
    optouts = OptOutSet()
    watcher = OptOutWatcher(client.watch_optouts, optouts).start()
    # Give the opt-out backlog a moment to start arriving before the first tokens are checked.
    watcher.connected.wait(connect_wait_s)
    refresher = KeyRefresher(keys).start()
    checker = TokenChecker(keys, optouts, clock)
    return Decryptor(checker, keys, optouts, refresher, watcher, client)
