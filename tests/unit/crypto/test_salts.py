import base64
import hashlib
import os
import time
from collections.abc import Callable

import pytest

from uid2_crypto.identity import IdentityScope, IdentityType, identity_hash
from uid2_crypto.salts import (
    BUCKET_COUNT,
    DAY_MS,
    SaltSet,
    bucket_index,
    first_level_hash,
    raw_uid2,
    raw_uid2_v3,
)

NOW = 1_700_000_000_000
FIRST_LEVEL_SALT = "first-level-salt-for-tests"


def det_rng(seed: bytes = b"seed") -> Callable[[int], bytes]:
    """A deterministic byte stream (SHA-256 in counter mode), so tests are repeatable."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        return bytes(out[:n])

    return rng


def test_known_answer_by_hand() -> None:
    _, ih = identity_hash("email", "Test@Example.com")
    assert ih == hashlib.sha256(b"test@example.com").digest()
    b64_ih = base64.b64encode(ih)
    assert b64_ih == b"lz3+Rj7IV4X1+Vr1ujkG7tstkxwk5pgkqJ6mXbpOgTs="
    flh = first_level_hash(ih, FIRST_LEVEL_SALT)
    assert flh == hashlib.sha256(b64_ih + FIRST_LEVEL_SALT.encode()).digest()
    idx = bucket_index(flh)
    assert idx == (flh[0] << 12) | (flh[1] << 4) | (flh[2] & 0x0F)
    salt = base64.b64encode(bytes(range(32))).decode()
    want = hashlib.sha256(base64.b64encode(flh) + salt.encode()).digest()
    assert raw_uid2(flh, salt) == want
    assert raw_uid2_v3(flh, salt, IdentityScope.UID2, IdentityType.EMAIL) == b"\x00" + want
    assert raw_uid2_v3(flh, salt, IdentityScope.EUID, IdentityType.PHONE) == b"\x14" + want


def test_bucket_index_range() -> None:
    assert bucket_index(b"\xff\xff\xff" + bytes(29)) == BUCKET_COUNT - 1
    assert bucket_index(b"\x00\x00\xf0" + bytes(29)) == 0
    assert bucket_index(b"\x12\x34\x56" + bytes(29)) == 0x12346


def test_generate_spreads_refresh_over_the_year() -> None:
    n = 36_500
    s = SaltSet.generate(n, det_rng(), NOW)
    assert len(s) == n
    days = [(s.refresh_from(i) - NOW) // DAY_MS for i in range(n)]
    assert min(days) >= 0 and max(days) < 365
    per_day = [0] * 365
    for d in days:
        per_day[d] += 1
    assert max(per_day) < 200  # ~100 a day expected
    for i in (0, n - 1):
        assert len(base64.b64decode(s.salt(i))) == 32
        assert s.rotated_at(i) == 0
        assert s.previous_salt(i, NOW) is None
    with pytest.raises(IndexError):
        s.salt(n)


def test_rotate_oldest_first_and_previous_salt_90_days() -> None:
    n = 1000
    s = SaltSet.generate(n, det_rng(), NOW)
    due_order = sorted(range(n), key=s.refresh_from)
    later = NOW + 5 * DAY_MS
    r = s.rotate(0.1, det_rng(b"rot"), later)
    rotated = [i for i in range(n) if r.rotated_at(i) == later]
    assert sorted(rotated) == sorted(due_order[:100])
    for i in rotated:
        assert r.salt(i) != s.salt(i)
        assert r.previous_salt(i, later) == s.salt(i)
        assert r.previous_salt(i, later + 90 * DAY_MS) == s.salt(i)
        assert r.previous_salt(i, later + 90 * DAY_MS + 1) is None
        assert r.refresh_from(i) == later + 365 * DAY_MS
    untouched = due_order[100]
    assert r.salt(untouched) == s.salt(untouched)
    assert r.previous_salt(untouched, later) is None
    # The original is immutable.
    assert all(s.rotated_at(i) == 0 for i in range(n))
    # Next rotation picks the next-oldest ones, not the freshly rotated.
    r2 = r.rotate(0.1, det_rng(b"rot2"), later + DAY_MS)
    rotated2 = {i for i in range(n) if r2.rotated_at(i) == later + DAY_MS}
    assert rotated2 == set(due_order[100:200])


def test_rotate_edges() -> None:
    s = SaltSet.generate(10, det_rng(), NOW)
    assert s.rotate(0.0, det_rng(), NOW) is s
    full = s.rotate(1.0, det_rng(b"x"), NOW + 1)
    assert all(full.rotated_at(i) == NOW + 1 for i in range(10))
    with pytest.raises(ValueError):
        s.rotate(1.5, det_rng(), NOW)


def test_rotate_rounds_the_bucket_count_to_nearest() -> None:
    # A daily 1/365 of a small set still rotates a bucket, and 2.6 buckets' worth rotates 3.
    s = SaltSet.generate(200, det_rng(), NOW)
    r = s.rotate(1 / 365, det_rng(b"x"), NOW + 1)
    assert sum(r.rotated_at(i) == NOW + 1 for i in range(200)) == 1
    t = SaltSet.generate(10, det_rng(), NOW).rotate(0.26, det_rng(b"y"), NOW + 1)
    assert sum(t.rotated_at(i) == NOW + 1 for i in range(10)) == 3


def test_first_due_is_the_earliest_refresh_from_and_moves_with_a_rotation() -> None:
    s = SaltSet.generate(1000, det_rng(), NOW)
    assert s.first_due_ms() == min(s.refresh_from(i) for i in range(1000))
    assert NOW <= s.first_due_ms() < NOW + 365 * DAY_MS
    half = s.rotate(0.5, det_rng(b"r"), NOW + DAY_MS)
    assert half.first_due_ms() == min(half.refresh_from(i) for i in range(1000))
    assert half.first_due_ms() > s.first_due_ms()
    full = s.rotate(1.0, det_rng(b"r"), NOW + DAY_MS)
    assert full.first_due_ms() == NOW + DAY_MS + 365 * DAY_MS


def test_blobs_round_trip() -> None:
    s = SaltSet.generate(500, det_rng(), NOW).rotate(0.2, det_rng(b"r"), NOW + DAY_MS)
    blobs = s.to_blobs()
    assert all(isinstance(v, bytes) for v in blobs.values())
    t = SaltSet.from_blobs(blobs)
    assert len(t) == len(s)
    for i in range(len(s)):
        assert t.salt(i) == s.salt(i)
        assert t.previous_salt(i, NOW + DAY_MS) == s.previous_salt(i, NOW + DAY_MS)
        assert t.rotated_at(i) == s.rotated_at(i)
        assert t.refresh_from(i) == s.refresh_from(i)
    assert t.refresh_period_ms == s.refresh_period_ms
    with pytest.raises(ValueError):
        SaltSet.from_blobs({**blobs, "salts": blobs["salts"][:-1]})
    with pytest.raises(ValueError):
        SaltSet.from_blobs({k: v for k, v in blobs.items() if k != "meta"})


def test_full_size_set_is_compact_and_fast() -> None:
    start = time.perf_counter()
    s = SaltSet.generate(BUCKET_COUNT, os.urandom, NOW)
    blobs = s.to_blobs()
    assert sum(len(b) for b in blobs.values()) < 100 * 1024 * 1024
    t0 = time.perf_counter()
    t = SaltSet.from_blobs(blobs)
    assert time.perf_counter() - t0 < 1.0
    assert time.perf_counter() - start < 10.0
    _, ih = identity_hash("email", "user@example.com")
    flh = first_level_hash(ih, FIRST_LEVEL_SALT)
    idx = bucket_index(flh)
    assert len(raw_uid2(flh, t.salt(idx))) == 32


def test_a_rotation_leaves_out_buckets_rotated_within_the_minimum_age() -> None:
    salts = SaltSet.generate(64, os.urandom, 0)
    half, n = salts.rotate_counted(0.5, os.urandom, 10_000)
    assert n == 32
    first = set(half.changed_buckets(salts))
    # The 32 just rotated are too young: a full rotation takes only the other 32.
    full, n = half.rotate_counted(1.0, os.urandom, 12_000, min_age_ms=5_000)
    assert n == 32 and set(full.changed_buckets(half)) == set(range(64)) - first
    # None old enough: nothing changes.
    same, n = full.rotate_counted(1.0, os.urandom, 13_000, min_age_ms=5_000)
    assert same is full and n == 0
    # Without a minimum age (the default), every bucket.
    assert full.rotate_counted(1.0, os.urandom, 13_000)[1] == 64
