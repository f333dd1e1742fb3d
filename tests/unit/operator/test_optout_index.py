"""The opt-out index keys raw UID2s by the salts it holds, never by salts a caller read earlier:
an opt-out recorded while the salts rotate is found under the salts lookups use."""

from __future__ import annotations

import os

from operator_svc.domain.state import OptOutIndex
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
