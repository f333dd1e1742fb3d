"""Wires the decryptor side for a service with operator ID_READER credentials: key cache and
its refresher, opt-out set and its watcher, and the token checker over them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from bidstream.decryptor.checker import TokenChecker
from bidstream.decryptor.key_cache import KeyCache, KeyRefresher
from bidstream.decryptor.operator_client import OperatorClient
from bidstream.decryptor.optouts import OptOutSet, OptOutWatcher
from svc_common.clock import Clock
from svc_common.grpc_server import CountFamily
from svc_common.stop_signals import StopRequested
from svc_common.tls import PeerTls

_log = structlog.get_logger("decryptor")

# The start-up wait for the opt-out backlog is taken in slices this long, so that a stop
# (`give_up`) ends it promptly, and so that a caller on the main thread runs its signal handlers.
_WAIT_SLICE_S = 0.1
# How long an impression whose token names a key we lack waits for the early key fetch it asked
# for: a fraction of an SSP's auction deadline (150 ms by default). Keys are normally
# published long before use, so only a key used at once after a rotation comes here.
EARLY_KEY_WAIT_S = 0.1


@dataclass
class Decryptor:
    checker: TokenChecker
    keys: KeyCache
    optouts: OptOutSet
    refresher: KeyRefresher
    watcher: OptOutWatcher
    client: OperatorClient
    clock: Clock

    def stop(self) -> None:
        self.watcher.stop()
        self.refresher.stop()
        self.client.close()

    def readings(self) -> dict[str, float]:
        """What a decrypting service's /metrics shows of its keys and opt-outs: the two things
        that go stale without an error on the bid path (old keys cannot decrypt new tokens; a
        broken opt-out stream lets opted-out users through)."""
        last, now_ms = self.keys.last_success_ms, self.clock.now_ms()
        return {
            # Since the last key fetch that worked; NaN before the first.
            "keys_age_seconds": (now_ms - last) / 1000 if last is not None else float("nan"),
            "key_refresh_failures": float(self.keys.failures),
            "optouts": float(len(self.optouts)),
            "optouts_loaded": 1.0 if self.optouts.loaded.is_set() else 0.0,
            "optout_stream_connected": 1.0 if self.watcher.connected.is_set() else 0.0,
        }

    def verdict_counts(self) -> dict[tuple[str, ...], float]:
        """(verdict,) -> tokens checked so far, every verdict from 0 (/metrics)."""
        return {(v.value,): float(n) for v, n in self.checker.verdict_counts().items()}

    def verdict_family(self) -> CountFamily:
        """The tokens this process checked, by verdict, as a /metrics counter: KEY_NOT_HELD
        (a key not shared with us, or not yet fetched) told from INVALID (forged, tampered,
        the wrong page), which the SSP's answer does not tell apart."""
        return CountFamily(
            "uid2_decryptor_token_verdicts",
            "Tokens checked, by verdict: VALID, EXPIRED, INVALID, KEY_NOT_HELD, OPTED_OUT, "
            "NO_KEYS, OPTOUTS_LOADING",
            ("verdict",),
            self.verdict_counts,
        )


def start_decryptor(
    operator: str,
    api_key: str,
    clock: Clock,
    *,
    key_refresh_s: float = 3600.0,
    early_refresh_min_s: float = 1.0,
    optouts_wait_s: float = 10.0,
    give_up: StopRequested | None = None,
    tls: PeerTls | None = None,
) -> Decryptor:
    """Fetches keys once and waits up to `optouts_wait_s` for the operator's opt-out backlog
    before returning (so the service starts vouching for tokens at once), then keeps both fresh
    on background threads. Until the backlog is in, decrypted tokens are OPTOUTS_LOADING.
    `give_up` (the service's stop event) ends that wait early, and skips the first key fetch
    when already set: a service asked to stop while its operator is unreachable must not sit out
    the whole wait first. (A key fetch in flight still runs to its deadline, about 2 s.)"""

    def stopping() -> bool:
        return give_up is not None and give_up.is_set()

    client = OperatorClient(operator, api_key, tls=tls)
    keys = KeyCache(
        client.get_bidstream_keys,
        clock,
        interval_s=key_refresh_s,
        early_min_interval_s=early_refresh_min_s,
    )
    if not stopping() and not keys.refresh():
        _log.warning("keys_unavailable_at_start")
    optouts = OptOutSet()
    watcher = OptOutWatcher(client.watch_optouts, optouts).start()
    deadline = time.monotonic() + optouts_wait_s
    while not optouts.loaded.is_set():
        if stopping():
            _log.info("optouts_wait_given_up")
            break
        left = deadline - time.monotonic()
        if left <= 0:
            _log.warning("optouts_not_loaded_at_start", waited_s=optouts_wait_s)
            break
        optouts.loaded.wait(min(_WAIT_SLICE_S, left))
    refresher = KeyRefresher(keys).start()
    checker = TokenChecker(keys, optouts, clock, early_refresh_wait_s=EARLY_KEY_WAIT_S)
    return Decryptor(checker, keys, optouts, refresher, watcher, client, clock)
