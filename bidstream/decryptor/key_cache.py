"""Bid-stream keys kept fresh: fetched at start, then about hourly with jitter, early (rate
limited) when a token names a key we lack, and kept when a fetch fails — a decryptor goes on
with its last good keys while the operator is unreachable (uid2-reference §5, §6).

`fetch` returns the key JSON body (see bidstream/key_json.py) or raises. The clock and
randomness are injected; `run_due()` is the unit of work, and `KeyRefresher` runs it on a
thread."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from svc_common.clock import Clock
from svc_common.errors import failure_fields
from svc_common.settings import number_in
from uid2_crypto.keys import parse_key_container_json
from uid2_crypto.tokens import TokenDecoder

_log = structlog.get_logger("key_cache")

Fetch = Callable[[], Mapping[str, Any]]

# The bounds a service accepts for its scheduled key refresh: faster than once a second would
# flood the operator (a DSP at 1 µs made 3,000 calls in 4 s); slower than daily would leave it
# holding keys the operator pruned long ago.
MIN_KEY_REFRESH_S = 1.0
MAX_KEY_REFRESH_S = 86_400.0
# The parser of a service's --key-refresh-s: out of range is a one-line usage error naming the
# flag and its variable.
KEY_REFRESH_SECONDS = number_in(MIN_KEY_REFRESH_S, MAX_KEY_REFRESH_S, " s")
KEY_REFRESH_RANGE = (
    f"key refresh interval must be between {MIN_KEY_REFRESH_S:g} and {MAX_KEY_REFRESH_S:g} s"
)

# With no keys at all, how long at most a failing operator is left alone while impressions
# keep asking for keys (the scheduled retry backs off further, up to retry_cap_s).
NO_KEYS_RETRY_CAP_S = 8.0
# A token naming a key we lack asks for an early refresh, and anyone can send one: random bytes
# name random key ids. With thousands of sites a refresh costs seconds of CPU here and a large
# container at the operator. Two limits:
# - only a key id the operator may have issued since our last fetch asks: operators number
#   their keys upwards, so above the highest id we hold, and by at most this many (a rotation
#   issues one key per keyset). An unknown id at or below it was pruned or never existed;
#   random 32-bit ids fall in the window once in 4,000;
# - each early refresh that brings no key we lacked doubles the gap before the next, up to
#   FUTILE_EARLY_REFRESH_CAP_S; one that brings a new key resets it. Only tokens made to name
#   just-above ids (their sender knows our ids) reach this, and they can delay a genuinely new
#   key by that much at most (keys are published well before use anyway: the operator's
#   scheduled rotation activates new keys 2 h later).
PLAUSIBLE_NEW_KEY_IDS = 1_000_000
FUTILE_EARLY_REFRESH_CAP_S = 60.0
# A client-side generated token that fails its domain or app check may be for a domain its
# site added since our last fetch (`site add --domain`): the keys' site data is then stale, and
# the site's new inventory would lose UID2 until the hourly fetch. Only a genuine token gets that
# far (the check follows both decryptions), but a token used on the wrong page is one, so such
# fetches are spaced by this much.
SITE_DATA_REFRESH_GAP_S = 60.0
# Doublings past this add nothing (2**30 s is decades) and keep `base * 2**n` a finite float:
# 1000.0 * 2**1024 raises OverflowError, which a long outage would otherwise reach.
_MAX_DOUBLINGS = 30


class KeyCache:
    def __init__(
        self,
        fetch: Fetch,
        clock: Clock,
        *,
        rng: Callable[[], float] = random.random,
        interval_s: float = 3600.0,
        jitter: float = 0.1,
        early_min_interval_s: float = 1.0,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 60.0,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._rng = rng
        self._interval_ms = interval_s * 1000
        self._jitter = jitter
        self._early_min_ms = early_min_interval_s * 1000
        self._retry_base_ms = retry_base_s * 1000
        self._retry_cap_ms = retry_cap_s * 1000
        self._decoder: TokenDecoder | None = None
        self._cond = threading.Condition(threading.Lock())
        self._fetch_lock = threading.Lock()
        self._failures = 0
        self._next_ms: float = clock.now_ms()  # due at once
        self._last_early_ms: float = -float("inf")
        self._early_pending = False
        # Whether the pending early refresh is for a key (counted as futile if it brings none).
        self._early_for_key = False
        self._last_site_data_ms: float = -float("inf")
        self._futile_early = 0  # early refreshes in a row that brought no new key
        self._key_ids: frozenset[int] = frozenset()
        self._max_key_id = 0
        self._fetching = False
        self.generation = 0  # completed refresh attempts, successful or not
        self.successes = 0
        self.last_success_ms: int | None = None

    @property
    def decoder(self) -> TokenDecoder | None:
        """The decoder over the last good keys; None until a fetch succeeded."""
        return self._decoder

    @property
    def next_refresh_ms(self) -> int:
        return int(self._next_ms)

    @property
    def failures(self) -> int:
        """Consecutive failed fetches since the last good one."""
        return self._failures

    def due(self) -> bool:
        return self._early_pending or self._clock.now_ms() >= self._next_ms

    def refresh(self) -> bool:
        """Fetches now (one fetch at a time); keeps the old keys on failure. True on success."""
        with self._fetch_lock:
            with self._cond:
                early = self._early_pending and self._early_for_key
                self._early_pending = False
                self._fetching = True
            ok, key_count, key_ids = False, 0, frozenset[int]()
            try:
                container = parse_key_container_json(self._fetch())
                decoder = TokenDecoder.from_container(container)
                key_count = len(container.keyring)
                key_ids = frozenset(k.id for k in container.keyring.keys)
                ok = True
            except Exception as exc:  # the operator down, or a container we cannot parse
                _log.warning(
                    "key_refresh_failed", failures=self._failures + 1, **failure_fields(exc)
                )
            now = self._clock.now_ms()
            with self._cond:
                if ok:
                    if early and key_ids <= self._key_ids:
                        self._futile_early += 1
                    elif key_ids - self._key_ids:
                        self._futile_early = 0
                    self._key_ids = key_ids
                    self._max_key_id = max(key_ids, default=0)
                    self._decoder = decoder
                    self._failures = 0
                    self.successes += 1
                    self.last_success_ms = now
                    spread = self._interval_ms * self._jitter * (2 * self._rng() - 1)
                    self._next_ms = now + self._interval_ms + spread
                else:
                    self._failures += 1
                    cap = min(self._retry_cap_ms, self._backoff_ms())
                    # Half fixed, half jitter: never a tight loop, never a thundering herd.
                    self._next_ms = now + cap / 2 + self._rng() * cap / 2
                self.generation += 1
                self._fetching = False
                self._cond.notify_all()
            if ok:
                _log.info("keys_refreshed", keys=key_count)
            return ok

    def _backoff_ms(self) -> float:
        """The failure backoff before its cap; caller holds `_cond`."""
        return float(self._retry_base_ms * 2 ** min(self._failures - 1, _MAX_DOUBLINGS))

    def run_due(self) -> bool | None:
        """Refreshes when due; None when not due."""
        return self.refresh() if self.due() else None

    def request_early_refresh(self, *, backing_off: bool = False) -> int | None:
        """Asks for a refresh ahead of schedule (a token named a key we lack). Rate limited:
        at most one per `early_min_interval_s`, doubled for each early refresh in a row that
        brought no new key (up to FUTILE_EARLY_REFRESH_CAP_S); with `backing_off` (no keys at
        all, the operator likely down) also by the failure backoff, capped at
        NO_KEYS_RETRY_CAP_S, so traffic cannot turn an outage into one fetch (and one warning)
        per second. Returns the generation to wait past with `wait_past`, or None when no
        refresh is pending or running."""
        now = self._clock.now_ms()
        with self._cond:
            gap = self._early_min_ms
            if self._futile_early:
                doubled = self._early_min_ms * 2 ** min(self._futile_early, _MAX_DOUBLINGS)
                gap = max(gap, min(FUTILE_EARLY_REFRESH_CAP_S * 1000, doubled))
            if backing_off and self._failures:
                gap = max(gap, min(NO_KEYS_RETRY_CAP_S * 1000, self._backoff_ms()))
            # A fetch under way may have begun before the operator issued the key: the early
            # one then follows it (seen under load: every impression in that window dropped
            # its token as invalid, once per rotation).
            if not self._early_pending and now - self._last_early_ms >= gap:
                self._last_early_ms = now
                self._early_pending = self._early_for_key = True
                self._cond.notify_all()
            if self._early_pending:  # done once the one under way, if any, and it are
                return self.generation + (1 if self._fetching else 0)
            return self.generation if self._fetching else None

    def request_site_data_refresh(self) -> int | None:
        """Asks for a refresh ahead of schedule because a token failed its domain or app check
        (SITE_DATA_REFRESH_GAP_S). Returns the generation to wait past when this call asked
        for one, else None (spaced out, or an early refresh already pending)."""
        now = self._clock.now_ms()
        with self._cond:
            if (
                self._early_pending
                or now - self._last_site_data_ms < SITE_DATA_REFRESH_GAP_S * 1000
            ):
                return None
            self._last_site_data_ms = now
            self._early_pending, self._early_for_key = True, False
            self._cond.notify_all()
            return self.generation + (1 if self._fetching else 0)

    def may_be_new(self, key_id: int | None) -> bool:
        """Whether a key id we lack may be one the operator issued since our last fetch (see
        PLAUSIBLE_NEW_KEY_IDS): worth an early refresh."""
        with self._cond:
            highest = self._max_key_id
        return key_id is not None and highest < key_id <= highest + PLAUSIBLE_NEW_KEY_IDS

    def wait_past(self, generation: int, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.generation > generation, timeout_s)

    def wait_until_due(self, timeout_s: float) -> None:
        """Sleeps until a refresh is due, one is requested early, or `timeout_s` passes."""
        with self._cond:
            if self._early_pending:
                return
            left_s = max(0.0, (self._next_ms - self._clock.now_ms()) / 1000)
            self._cond.wait(min(timeout_s, left_s))

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class KeyRefresher:
    """Runs a KeyCache's refreshes on a daemon thread until stopped."""

    def __init__(self, cache: KeyCache, *, poll_s: float = 1.0) -> None:
        self._cache = cache
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-refresh", daemon=True)

    def start(self) -> KeyRefresher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._cache.run_due()
            if self._stop.is_set():
                return
            self._cache.wait_until_due(self._poll_s)

    def stop(self) -> None:
        self._stop.set()
        self._cache.wake()
        self._thread.join(timeout=5)
