"""WatchOptOuts' `since` bounds the backlog only: a reader resumes a few seconds before the
newest opt-out it has seen, and an opt-out another operator process recorded reaches this one
after later-stamped ones. Dropped for being older than `since` when it arrived, it was never
sent to that reader at all."""

from __future__ import annotations

import base64
import time

from operator_svc.domain.dii import dii_flh
from operator_svc.store import OperatorStore
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
