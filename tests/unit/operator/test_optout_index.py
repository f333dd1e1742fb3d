"""The opt-out index keys raw UID2s by the salts it holds, never by salts a caller read earlier:
an opt-out recorded while the salts rotate is found under the salts lookups use."""

from __future__ import annotations

import os

from operator_svc.domain.state import EVENT_BLOCK, OptOutIndex
from operator_svc.store import OptOutRow
from uid2_crypto.salts import BUCKET_COUNT, SaltSet, bucket_index, raw_uid2

T0 = 1_800_000_000_000


def _raw(flh: bytes, salts: SaltSet) -> bytes:
    return raw_uid2(flh, salts.salt(bucket_index(flh)))


def test_rows_added_after_a_salt_change_use_the_new_salts() -> None:
    old = SaltSet.generate(BUCKET_COUNT, os.urandom, T0)
    new = old.rotate(1.0, os.urandom, T0)
    index = OptOutIndex(old)
    first, second = os.urandom(32), os.urandom(32)
    index.add([OptOutRow(1, first, T0)])
    index.use_salts(new)  # a rotation lands between a caller's reads and its add
    index.add([OptOutRow(2, second, T0 + 1)])
    for flh in (first, second):
        assert index.raw_opted_out_at(_raw(flh, new)) is not None
        # Under the salt before the rotation too: tokens issued before it carry that one.
        assert index.raw_opted_out_at(_raw(flh, old)) is not None
    newer = new.rotate(1.0, os.urandom, T0 + 2)
    index.use_salts(newer)
    for flh in (first, second):  # only the last rotation's previous salt is kept
        assert index.raw_opted_out_at(_raw(flh, old)) is None
        assert index.raw_opted_out_at(_raw(flh, newer)) is not None
    assert index.opted_out_at(second) == T0 + 1


def test_never_opted_out_identities_are_kept_out_of_the_raw_views() -> None:
    salts = SaltSet.generate(BUCKET_COUNT, os.urandom, T0)
    never = os.urandom(32)
    index = OptOutIndex(salts, frozenset({never}))
    assert index.add([OptOutRow(1, never, T0)]) == 0
    assert index.raw_opted_out_at(_raw(never, salts)) is None
    assert index.events_from(0)[0] == []


def _in_bucket(bucket: int) -> bytes:
    """A first-level hash that falls in `bucket` (salts.bucket_index reads 20 bits of it)."""
    rest = os.urandom(30)
    flh = bytes([bucket >> 12, (bucket >> 4) & 0xFF, (rest[0] & 0xF0) | (bucket & 0x0F)])
    flh += rest[1:]
    assert bucket_index(flh) == bucket
    return flh


def test_a_partial_rotation_recomputes_only_its_buckets_and_what_came_meanwhile() -> None:
    # A daily rotation (1 in 365) changes a few thousand buckets: only their opt-outs get new
    # raw UID2s, computed before the switch; one recorded in between is recomputed at it.
    old = SaltSet.generate(BUCKET_COUNT, os.urandom, T0)
    new = old.rotate(1 / 365, os.urandom, T0 + 1)
    changed = new.changed_buckets(old)
    assert 0 < len(changed) < BUCKET_COUNT // 100
    assert all(new.salt(b) != old.salt(b) for b in changed)
    index = OptOutIndex(old)
    rotated, kept = (
        _in_bucket(changed[0]),
        _in_bucket(next(b for b in range(9) if b not in changed)),
    )
    index.add([OptOutRow(1, rotated, T0), OptOutRow(2, kept, T0)])
    switch = index.prepare_salts(new)
    assert not switch.rebuild and len(switch.fresh) == 2  # the rotated one's current and previous
    meanwhile = _in_bucket(changed[1])
    index.add([OptOutRow(3, meanwhile, T0 + 2)])  # under the old salts, still in use
    with index.cond:
        index.apply_salts(switch)
    for flh in (rotated, meanwhile):
        assert index.raw_opted_out_at(_raw(flh, new)) is not None
        assert index.raw_opted_out_at(_raw(flh, old)) is not None  # now its previous salt
    assert index.raw_opted_out_at(_raw(kept, new)) == T0  # untouched: its salt did not change
    newer = new.rotate(1.0, os.urandom, T0 + 3)
    index.use_salts(newer)
    assert index.raw_opted_out_at(_raw(rotated, old)) is None  # two rotations ago: dropped


def test_changed_buckets_of_a_set_of_another_size_are_all() -> None:
    small = SaltSet.generate(64, os.urandom, T0)
    assert small.changed_buckets(SaltSet.generate(128, os.urandom, T0)) == list(range(64))
    assert small.changed_buckets(small) == []


def test_an_opt_out_recorded_during_a_switch_keeps_only_the_last_two_salts() -> None:
    # Recorded between prepare and apply, it was indexed under the old current and old
    # previous salts; the old previous one stayed (two rotations ago) until a restart.
    s0 = SaltSet.generate(BUCKET_COUNT, os.urandom, T0)
    s1 = s0.rotate(1.0, os.urandom, T0 + 1)  # every bucket once: s0 is the previous salt
    s2 = s1.rotate(1 / 365, os.urandom, T0 + 2)
    bucket = s2.changed_buckets(s1)[0]
    flh = _in_bucket(bucket)
    index = OptOutIndex(s1)
    switch = index.prepare_salts(s2)
    index.add([OptOutRow(1, flh, T0 + 3)])  # this process's own OptOut, during the sync
    with index.cond:
        index.apply_salts(switch)
    assert index.raw_opted_out_at(raw_uid2(flh, s2.salt(bucket))) == T0 + 3
    assert index.raw_opted_out_at(raw_uid2(flh, s1.salt(bucket))) == T0 + 3
    assert index.raw_opted_out_at(raw_uid2(flh, s0.salt(bucket))) is None
    # Streams sent it under s1 and s0: it is recorded again, to be sent under s2 and s1.
    assert [f for _, f in index.events_from(0)[0]] == [flh, flh]


def test_opt_outs_from_around_a_rotation_on_are_streamed_again_under_the_new_salt() -> None:
    # Recorded here after another process rotated (or synced before the rotation was read),
    # an opt-out went out under the old salts only; a token issued under the new salt before
    # the opt-out was known everywhere must be refused too. Older opt-outs were known before
    # any such token: not sent again.
    s1 = SaltSet.generate(BUCKET_COUNT, os.urandom, T0)
    rotated_at = T0 + 3_600_000
    s2 = s1.rotate(1 / 365, os.urandom, rotated_at)
    first, second = s2.changed_buckets(s1)[:2]
    recent, old = _in_bucket(first), _in_bucket(second)
    index = OptOutIndex(s1)
    index.add([OptOutRow(1, old, rotated_at - 10 * 60_000), OptOutRow(2, recent, rotated_at + 5)])
    index.use_salts(s2)
    assert [flh for _, flh in index.events_from(0)[0]] == [old, recent, recent]


def test_a_resume_skips_only_blocks_of_older_events() -> None:
    """`first_position_from` lets a resuming stream skip, in O(log n), the blocks every event
    of which is older than its `since` (a scan of every event held a resumed stream's first
    answer 0.6 s per 5 million opt-outs). Events are not in time order: one another process
    recorded arrives after later-stamped ones, and a salt rotation sends some again."""
    salts = SaltSet.generate(BUCKET_COUNT, os.urandom, T0)
    index = OptOutIndex(salts)
    times = [T0 + 10 * n for n in range(3 * EVENT_BLOCK + 50)]
    late = 2 * EVENT_BLOCK + 7
    times[late] = T0 + 5  # recorded late, stamped early
    times[EVENT_BLOCK - 1] = T0 + 10 * (2 * EVENT_BLOCK + 3)  # stamped later than its block
    index.add([OptOutRow(n, os.urandom(32), ts) for n, ts in enumerate(times, 1)])
    assert index.first_position_from(0) == 0
    sinces = (
        T0,
        T0 + 6,
        T0 + 10 * EVENT_BLOCK,
        T0 + 10 * (2 * EVENT_BLOCK + 3),  # exactly a block's latest: that event is sent
        T0 + 10 * (2 * EVENT_BLOCK + 3) + 1,
        T0 + 10 * (3 * EVENT_BLOCK + 100),
    )
    for since in sinces:
        position = index.first_position_from(since)
        assert position % EVENT_BLOCK == 0
        assert all(ts < since for ts in times[:position]), since
        # Not a block later than need be: the block it starts holds an event from `since`,
        # or it is the end of the whole blocks.
        block = times[position : position + EVENT_BLOCK]
        assert any(ts >= since for ts in block) or position == 3 * EVENT_BLOCK, since
    # The block with the early-stamped late event is not skipped for a `since` after it: the
    # loop then sends what is not older, and skips the late one as a full scan would.
    assert index.first_position_from(T0 + 10 * (2 * EVENT_BLOCK + 3) + 1) == 2 * EVENT_BLOCK
