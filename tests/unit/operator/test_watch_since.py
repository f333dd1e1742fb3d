"""WatchOptOuts' `since` bounds the backlog only: a reader resumes a few seconds before the
newest opt-out it has seen, and an opt-out another operator process recorded reaches this one
after later-stamped ones. Dropped for being older than `since` when it arrived, it was never
sent to that reader at all."""

from __future__ import annotations

import base64
import os
import time

from operator_svc.domain.dii import dii_flh
from operator_svc.domain.state import EVENT_BLOCK
from operator_svc.store import OperatorStore, OptOutRow
from tests.unit.operator.conftest import T0, Env
from uid2_crypto.salts import bucket_index, raw_uid2


def test_an_opt_out_learnt_after_the_backlog_is_sent_whatever_its_time(env: Env) -> None:
    deadline = time.monotonic() + 10
    since = T0 + 3_600_000  # the reader has seen opt-outs up to an hour after T0
    stream = env.op.optouts.watch(env.client("reader"), since, lambda: time.monotonic() < deadline)
    while next(stream) is not None:  # the backlog, up to its end mark
        pass
    other = OperatorStore.open(env.dir)  # another process on the same data
    try:
        _, flh = dii_flh("email", "late.arrival@example.com", env.op.state.first_level_salt)
        other.add_optout(flh, lambda: T0 + 1_000)  # recorded there before the reader's since
    finally:
        other.close()
    env.op.sync_now()
    raw = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(bucket_index(flh)))).decode()
    item = next(stream)
    assert item is not None and item == (raw, T0 + 1_000)


def test_a_resumed_backlog_is_every_opt_out_from_since_and_no_other(env: Env) -> None:
    """Blocks of older opt-outs are skipped (OptOutIndex.first_position_from); whatever is
    skipped must be exactly what the backlog leaves out anyway, out-of-order times included."""
    times = [T0 + 10 * n for n in range(2 * EVENT_BLOCK + 30)]
    times[EVENT_BLOCK + 5] = T0 + 1  # another process's opt-out, learnt late, stamped early
    times[EVENT_BLOCK - 2] = T0 + 10 * (EVENT_BLOCK + 20)  # later than the rest of its block
    index = env.op.state.optouts
    held = [ts for ts, _ in index.events_from(0)[0]]  # the fixture's own opt-outs
    index.add([OptOutRow(n, os.urandom(32), ts) for n, ts in enumerate(times, 1)])
    deadline = time.monotonic() + 10
    for since in (T0 + 2, T0 + 10 * (EVENT_BLOCK + 3), T0 + 10 * (EVENT_BLOCK + 21)):
        stream = env.op.optouts.watch(
            env.client("reader"), since, lambda: time.monotonic() < deadline
        )
        sent = []
        while (item := next(stream)) is not None:
            sent.append(item[1])
        stream.close()
        assert sorted(sent) == sorted(ts for ts in held + times if ts >= since), since
