"""Opt-out times rise with the commit order, so a WatchOptOuts reader resuming at "last time
seen minus a margin" cannot skip one (audit: optout_resume_gap)."""

from __future__ import annotations

import sqlite3
import threading
import time

from operator_svc.store import OperatorStore
from tests.unit.operator.conftest import Env


def test_time_is_read_once_the_write_lock_is_held(env: Env) -> None:
    holder = sqlite3.connect(env.store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write
    result: list[tuple[int, int]] = []
    writer = threading.Thread(
        target=lambda: result.append(
            env.store.add_optout(b"\x01" * 32, lambda: time.time_ns() // 1_000_000)
        )
    )
    writer.start()
    time.sleep(0.5)
    released_ms = time.time_ns() // 1_000_000
    holder.execute("COMMIT")
    holder.close()
    writer.join(10)
    assert result and result[0][1] >= released_ms


def test_times_never_fall_behind_the_last_row(env: Env) -> None:
    _, first = env.store.add_optout(b"\x02" * 32, lambda: 5_000)
    _, second = env.store.add_optout(b"\x03" * 32, lambda: 1_000)  # the clock stepped back
    assert second >= first
    rows = env.store.optouts_after(0)
    assert [r.opted_out_at_ms for r in rows] == sorted(r.opted_out_at_ms for r in rows)


def test_repeat_keeps_the_first_time(env: Env) -> None:
    store: OperatorStore = env.store
    _, first = store.add_optout(b"\x04" * 32, lambda: 10_000)
    _, again = store.add_optout(b"\x04" * 32, lambda: 20_000)
    assert again == first
