from __future__ import annotations

import base64
import struct
import threading
from typing import Any

from structlog.testing import capture_logs

from bidstream.decryptor.checker import KEY_NOT_HELD_LOG_INTERVAL_S, TokenChecker, Verdict
from bidstream.decryptor.key_cache import (
    NO_KEYS_RETRY_CAP_S,
    PLAUSIBLE_NEW_KEY_IDS,
    SITE_DATA_REFRESH_GAP_S,
    KeyCache,
    KeyRefresher,
)
from bidstream.decryptor.optouts import OptOutSet
from tests.unit.ssp.support import (
    APP,
    DOMAIN,
    KeySet,
    fixed_clock,
    loaded_optouts,
    make_key,
    mint,
    raw_uid_b64,
)


def checker_for(keys: KeySet, **kw: Any) -> tuple[TokenChecker, KeyCache, OptOutSet]:
    cache = KeyCache(keys.body, keys.clock, **kw)
    assert cache.refresh()
    optouts = loaded_optouts()
    return TokenChecker(cache, optouts, keys.clock), cache, optouts


def test_verdicts() -> None:
    keys = KeySet(fixed_clock())
    checker, _, optouts = checker_for(keys)
    assert checker.check(mint(keys), DOMAIN) is Verdict.VALID
    assert checker.check(mint(keys, expires_in_s=30, created_ago_s=60), DOMAIN) is Verdict.EXPIRED
    assert checker.check("A4" + "x" * 200, DOMAIN) is Verdict.INVALID
    assert checker.check("garbage!", DOMAIN) is Verdict.INVALID
    tampered = mint(keys)
    tampered = tampered[:-5] + ("A" if tampered[-5] != "A" else "B") + tampered[-4:]
    assert checker.check(tampered, DOMAIN) is Verdict.INVALID
    optouts.add(raw_uid_b64(1), 123)
    assert checker.check(mint(keys, uid=1), DOMAIN) is Verdict.OPTED_OUT
    assert checker.check(mint(keys, uid=2), DOMAIN) is Verdict.VALID


def test_tokens_are_not_vouched_for_until_the_opt_out_backlog_is_in() -> None:
    clock = fixed_clock()
    keys = KeySet(clock)
    cache = KeyCache(keys.body, clock)
    assert cache.refresh()
    optouts = OptOutSet()
    checker = TokenChecker(cache, optouts, clock)
    assert checker.check(mint(keys, uid=3), DOMAIN) is Verdict.OPTOUTS_LOADING
    optouts.add(raw_uid_b64(4), 123)  # what has arrived already counts
    assert checker.check(mint(keys, uid=4), DOMAIN) is Verdict.OPTED_OUT
    optouts.loaded.set()
    assert checker.check(mint(keys, uid=3), DOMAIN) is Verdict.VALID


def test_client_side_generated_tokens_need_the_sites_domain_or_app() -> None:
    keys = KeySet(fixed_clock())
    checker, _, _ = checker_for(keys)
    token = mint(keys, client_side=True)
    assert checker.check(token, DOMAIN) is Verdict.VALID
    assert checker.check(token, APP) is Verdict.VALID
    assert checker.check(token, "evil.example.org") is Verdict.INVALID
    assert checker.check(token, None) is Verdict.INVALID


def test_a_page_on_a_subdomain_of_the_sites_domain_is_the_sites() -> None:
    keys = KeySet(fixed_clock())
    checker, _, _ = checker_for(keys)
    token = mint(keys, client_side=True)
    assert checker.check(token, "www." + DOMAIN) is Verdict.VALID
    assert checker.check(token, "a.b." + DOMAIN.upper()) is Verdict.VALID
    # Only parents: a sibling, a lookalike, or the site's domain's own parent is not the site.
    assert checker.check(token, "bad" + DOMAIN) is Verdict.INVALID
    assert checker.check(token, DOMAIN.split(".", 1)[1]) is Verdict.INVALID
    # An app's bundle id is matched whole, never as a domain.
    assert checker.check(token, "x." + APP, app=True) is Verdict.INVALID
    assert checker.check(token, APP, app=True) is Verdict.VALID


def test_a_domain_added_since_the_last_fetch_is_fetched_for_at_most_once_a_minute() -> None:
    clock = fixed_clock()
    keys = KeySet(clock)
    cache = KeyCache(keys.body, clock)
    assert cache.refresh()
    checker = TokenChecker(cache, loaded_optouts(), clock, early_refresh_wait_s=5.0)
    refresher = KeyRefresher(cache, poll_s=0.05).start()
    try:
        token = mint(keys, client_side=True)
        keys.more_domains.append("sport.example.net")
        assert checker.check(token, "sport.example.net") is Verdict.VALID
        assert cache.successes == 2
        # A genuine token on the wrong page fails the same check: fetched for, but spaced out.
        assert checker.check(token, "evil.example.org") is Verdict.INVALID
        assert cache.successes == 2 and not cache.due()
        clock.advance(int(SITE_DATA_REFRESH_GAP_S * 1000))
        assert checker.check(token, "evil.example.org") is Verdict.INVALID
        assert cache.successes == 3
    finally:
        refresher.stop()


def test_no_keys_means_no_verdict_on_the_token() -> None:
    clock = fixed_clock()
    keys = KeySet(clock)
    cache = KeyCache(keys.body, clock)
    checker = TokenChecker(cache, loaded_optouts(), clock, early_refresh_wait_s=0.0)
    assert checker.check(mint(keys), DOMAIN) is Verdict.NO_KEYS


def test_unknown_key_triggers_early_refresh_and_the_token_decrypts() -> None:
    keys = KeySet(fixed_clock())
    checker, cache, _ = checker_for(keys, early_min_interval_s=0.0)
    refresher = KeyRefresher(cache, poll_s=0.05).start()
    try:
        new_key = keys.rotate_site_key(202)
        assert checker.check(mint(keys, site_key=new_key), DOMAIN) is Verdict.VALID
        assert cache.successes >= 2
    finally:
        refresher.stop()


def _naming_master_key(token: str, key_id: int) -> str:
    data = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data[2:6] = struct.pack(">I", key_id)
    return base64.urlsafe_b64encode(bytes(data)).decode().rstrip("=")


def test_only_a_key_id_the_operator_may_have_issued_since_asks_for_keys() -> None:
    # Random bytes name random keys; a fetch for each would be the sender's to command.
    keys = KeySet(fixed_clock())  # key ids 101 (master) and 201 (site): the highest is 201
    checker, cache, _ = checker_for(keys, early_min_interval_s=0.0)
    fetched = cache.successes
    for key_id in (5, 150, 201 + PLAUSIBLE_NEW_KEY_IDS + 1, 2**32 - 1):
        junk = _naming_master_key(mint(keys), key_id)
        assert checker.check(junk, DOMAIN) is Verdict.KEY_NOT_HELD
    assert cache.successes == fetched and not cache.due()  # no fetch asked for
    # Just above the highest: perhaps issued since the last fetch, worth asking for.
    assert checker.check(_naming_master_key(mint(keys), 202), DOMAIN) is Verdict.KEY_NOT_HELD
    assert cache.due()


def test_a_key_we_are_not_given_is_told_from_a_forged_token() -> None:
    # A site that stopped sharing with us (`sharing allow` for others only): its tokens decrypt
    # with the master key but name a site key the operator does not give us. Not INVALID.
    keys = KeySet(fixed_clock())
    checker, cache, _ = checker_for(keys, early_min_interval_s=0.0)
    unshared = make_key(150, 11, 43, now=keys.now_s())  # below 201: no early fetch either
    token = mint(keys, site_key=unshared)
    assert checker.check(token, DOMAIN) is Verdict.KEY_NOT_HELD
    assert not cache.due()
    assert checker.check(_naming_master_key(mint(keys), 5), DOMAIN) is Verdict.KEY_NOT_HELD
    # A genuine token tampered with is still INVALID, as is a genuine one on the wrong page.
    tampered = mint(keys)
    tampered = tampered[:-5] + ("A" if tampered[-5] != "A" else "B") + tampered[-4:]
    assert checker.check(tampered, DOMAIN) is Verdict.INVALID
    assert checker.check(mint(keys, client_side=True), "evil.example.org") is Verdict.INVALID


def test_verdicts_are_counted_from_zero() -> None:
    keys = KeySet(fixed_clock())
    checker, _, _ = checker_for(keys)
    assert checker.verdict_counts() == dict.fromkeys(Verdict, 0)
    checker.check(mint(keys), DOMAIN)
    checker.check(mint(keys, site_key=make_key(150, 11, 43, now=keys.now_s())), DOMAIN)
    checker.check(mint(keys, site_key=make_key(151, 11, 43, now=keys.now_s())), DOMAIN)
    checker.check("garbage!", DOMAIN)
    counts = checker.verdict_counts()
    assert counts[Verdict.VALID] == 1 and counts[Verdict.INVALID] == 1
    assert counts[Verdict.KEY_NOT_HELD] == 2
    assert set(counts) == set(Verdict) and sum(counts.values()) == 4


def test_tokens_naming_keys_not_held_are_logged_once_per_interval() -> None:
    clock = fixed_clock()
    keys = KeySet(clock)
    cache = KeyCache(keys.body, clock)
    assert cache.refresh()
    checker = TokenChecker(
        cache, loaded_optouts(), clock, early_refresh_wait_s=0.0, monotonic=clock.monotonic_s
    )
    tokens = [mint(keys, site_key=make_key(k, 11, 43, now=keys.now_s())) for k in (150, 151)]
    with capture_logs() as logs:
        for _ in range(3):
            assert checker.check(tokens[0], DOMAIN) is Verdict.KEY_NOT_HELD
        assert checker.check(tokens[1], DOMAIN) is Verdict.KEY_NOT_HELD
        clock.advance(int(KEY_NOT_HELD_LOG_INTERVAL_S * 1000) - 1)
        assert checker.check(mint(keys), DOMAIN) is Verdict.VALID
        clock.advance(1)
        # The interval over: the next check, whatever its verdict, writes what was held back.
        assert checker.check(mint(keys), DOMAIN) is Verdict.VALID
        assert checker.check(mint(keys), DOMAIN) is Verdict.VALID
    lines = [e for e in logs if e["event"] == "tokens_naming_keys_not_held"]
    assert [(e["tokens_since_last"], e["key_id"], e["status"]) for e in lines] == [
        (1, 150, "NOT_AUTHORIZED_FOR_KEY"),
        (3, 151, "NOT_AUTHORIZED_FOR_KEY"),
    ]
    assert all(e["log_level"] == "warning" for e in lines)
    for token in tokens:  # never the token, nor a piece of it
        assert token[20:60] not in repr(logs)


def test_many_threads_share_one_checker() -> None:
    keys = KeySet(fixed_clock())
    checker, _, _ = checker_for(keys)
    tokens = [mint(keys, uid=i) for i in range(1, 20)]
    bad: list[Verdict] = []

    def work() -> None:
        for t in tokens * 20:
            v = checker.check(t, DOMAIN)
            if v is not Verdict.VALID:
                bad.append(v)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_no_keys_asks_for_a_fetch_now_not_at_the_backoffs_next_try() -> None:
    # The operator was down at start: the first fetch failed and the next is backed off.
    clock = fixed_clock()
    keys = KeySet(clock)
    up = False

    def fetch() -> Any:
        if not up:
            raise ConnectionError("operator down")
        return keys.body()

    cache = KeyCache(fetch, clock, rng=lambda: 0.5, retry_base_s=30.0)
    assert cache.run_due() is False
    assert not cache.due()
    checker = TokenChecker(cache, loaded_optouts(), clock, early_refresh_wait_s=0.0)
    token = mint(keys)
    assert checker.check(token, DOMAIN) is Verdict.NO_KEYS
    assert cache.due()  # without waiting out the backoff
    up = True
    assert cache.run_due() is True
    assert checker.check(token, DOMAIN) is Verdict.VALID
    # Rate limited as any early refresh: a flood of impressions is not a flood of fetches.
    up = False
    cache2 = KeyCache(fetch, clock, rng=lambda: 0.5, retry_base_s=30.0)
    cache2.run_due()
    checker2 = TokenChecker(cache2, loaded_optouts(), clock, early_refresh_wait_s=0.0)
    checker2.check(token, DOMAIN)
    assert cache2.run_due() is False
    checker2.check(token, DOMAIN)
    assert not cache2.due()


def test_an_outage_with_traffic_is_not_a_fetch_per_impression() -> None:
    # No keys, the operator down for 5 minutes, an impression every second: the early
    # refreshes follow the failure backoff (capped at NO_KEYS_RETRY_CAP_S), not the
    # once-a-second limit of early refreshes for a missing key.
    clock = fixed_clock()
    keys = KeySet(clock)
    fetches = 0

    def fetch() -> Any:
        nonlocal fetches
        fetches += 1
        raise ConnectionError("operator down")

    cache = KeyCache(fetch, clock, rng=lambda: 0.5)
    checker = TokenChecker(cache, loaded_optouts(), clock, early_refresh_wait_s=0.0)
    token = mint(keys)
    for _ in range(300):
        assert checker.check(token, DOMAIN) is Verdict.NO_KEYS
        cache.run_due()
        clock.advance(1000)
    assert 300 / NO_KEYS_RETRY_CAP_S <= fetches <= 300 / NO_KEYS_RETRY_CAP_S * 1.5


def test_a_long_outage_does_not_overflow_the_backoff() -> None:
    # Review: 1000.0 * 2**1024 raised OverflowError after 1,025 failed fetches (~2.3 h of
    # outage with traffic): the refresher thread died and every impression got INTERNAL.
    def fetch() -> Any:
        raise ConnectionError("operator down")

    clock = fixed_clock()
    cache = KeyCache(fetch, clock, rng=lambda: 0.5)
    checker = TokenChecker(cache, loaded_optouts(), clock, early_refresh_wait_s=0.0)
    token = mint(KeySet(clock))
    for _ in range(1100):
        assert checker.check(token, DOMAIN) is Verdict.NO_KEYS
        assert cache.refresh() is False
        clock.advance(int(NO_KEYS_RETRY_CAP_S * 1000))
    assert cache.failures == 1100
