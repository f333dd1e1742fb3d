from __future__ import annotations

import threading
from typing import Any

from bidstream.decryptor.key_cache import KeyCache
from svc_common.clock import ManualClock
from tests.unit.ssp.support import KeySet

HOUR_MS = 3_600_000


class Fetcher:
    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.calls = 0
        self.down = False

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise ConnectionError("operator down")
        return self.keys.body()


def make(rng: float = 0.5, **kw: Any) -> tuple[KeyCache, Fetcher, ManualClock]:
    clock = ManualClock(1_000_000)
    fetch = Fetcher(KeySet(clock))
    return KeyCache(fetch, clock, rng=lambda: rng, **kw), fetch, clock


def test_fetches_at_start_then_hourly_with_jitter() -> None:
    cache, fetch, clock = make(rng=1.0, jitter=0.1)
    assert cache.decoder is None and cache.due()
    assert cache.run_due() is True
    assert cache.decoder is not None and fetch.calls == 1
    # rng 1.0 -> +10% jitter
    assert cache.next_refresh_ms == 1_000_000 + HOUR_MS + HOUR_MS // 10
    clock.advance(HOUR_MS)
    assert cache.run_due() is None and fetch.calls == 1
    clock.advance(HOUR_MS // 10)
    assert cache.run_due() is True and fetch.calls == 2


def test_jitter_spreads_both_ways() -> None:
    low, _, _ = make(rng=0.0, jitter=0.1)
    low.refresh()
    assert low.next_refresh_ms == 1_000_000 + HOUR_MS - HOUR_MS // 10


def test_failure_keeps_last_good_keys_and_backs_off() -> None:
    cache, fetch, clock = make(rng=1.0, retry_base_s=1.0, retry_cap_s=8.0)
    assert cache.refresh()
    good = cache.decoder
    fetch.down = True
    delays = []
    for _ in range(6):
        clock.set(cache.next_refresh_ms)
        before = clock.now_ms()
        assert cache.run_due() is False
        assert cache.decoder is good  # last good keys stay in use
        delays.append(cache.next_refresh_ms - before)
    assert delays == [1000, 2000, 4000, 8000, 8000, 8000]  # capped exponential
    assert cache.failures == 6
    fetch.down = False
    clock.set(cache.next_refresh_ms)
    assert cache.run_due() is True and cache.failures == 0
    assert cache.decoder is not good


def test_failed_first_fetch_leaves_no_decoder_and_retries() -> None:
    cache, fetch, clock = make(rng=0.0, retry_base_s=2.0)
    fetch.down = True
    assert cache.refresh() is False and cache.decoder is None
    assert cache.next_refresh_ms == clock.now_ms() + 1000  # half fixed, half jitter (rng 0)


def test_early_refresh_is_rate_limited() -> None:
    cache, fetch, clock = make(early_min_interval_s=5.0)
    cache.refresh()
    assert not cache.due()
    fetch.keys.rotate_site_key(202)  # the key the token named: this early refresh brings it
    gen = cache.request_early_refresh()
    assert gen == cache.generation and cache.due()
    assert cache.run_due() is True and fetch.calls == 2
    assert cache.generation > gen
    # Within the rate limit: nothing pending, nothing to wait for.
    clock.advance(4_000)
    assert cache.request_early_refresh() is None and not cache.due()
    clock.advance(1_000)
    assert cache.request_early_refresh() is not None and cache.due()


def test_early_refreshes_that_bring_no_new_key_back_off() -> None:
    # Tokens naming keys nobody has (random bytes, sent on purpose) must not buy a full key
    # fetch every second: each futile early refresh doubles the gap, up to a minute.
    cache, fetch, clock = make(early_min_interval_s=1.0)
    cache.refresh()
    gaps = []
    for _ in range(8):
        waited = 0
        while cache.request_early_refresh() is None:
            clock.advance(500)
            waited += 500
        cache.run_due()
        gaps.append(waited)
    assert gaps[:3] == [0, 2_000, 4_000]
    assert gaps[-2:] == [60_000, 60_000]  # capped
    assert fetch.calls == 9
    # A new key brought by an early refresh: back to one a second.
    fetch.keys.rotate_site_key(202)
    clock.advance(60_000)
    assert cache.request_early_refresh() is not None
    cache.run_due()
    clock.advance(1_000)
    assert cache.request_early_refresh() is not None


def test_malformed_container_counts_as_failure() -> None:
    clock = ManualClock(0)
    cache = KeyCache(lambda: {"keys": "nope"}, clock)
    assert cache.refresh() is False and cache.decoder is None


def test_an_early_refresh_asked_during_a_fetch_follows_it() -> None:
    """The fetch under way may have begun before the operator issued the key a token names:
    waiting for it alone, every impression in that window dropped its token as invalid (the
    rotation-under-traffic test, on a loaded box). An early refresh follows it, and the caller
    waits past both."""
    cache, fetch, clock = make(early_min_interval_s=1.0)
    cache.refresh()
    clock.advance(1_000)
    started, release = threading.Event(), threading.Event()
    real = fetch.__call__

    def slow_fetch() -> dict[str, Any]:
        body = real()  # read before the rotation below
        started.set()
        release.wait(5)
        return body

    cache._fetch = slow_fetch
    regular = threading.Thread(target=cache.refresh)
    regular.start()
    assert started.wait(5)
    fetch.keys.rotate_site_key(202)  # issued while the fetch is under way, not in it
    gen = cache.request_early_refresh()
    assert gen == cache.generation + 1 and cache.due()
    cache._fetch = real
    release.set()
    regular.join()
    assert not cache.wait_past(gen, 0.05)  # the fetch under way did not bring it ...
    assert cache.run_due() is True and cache.wait_past(gen, 0)  # ... the one after it does
    assert 202 in cache._key_ids
