"""The sync thread keeps a serving operator in step with the store, through failed syncs."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from operator_svc import admin
from operator_svc.domain.state import OperatorState, StateLoader, Syncer
from tests.support.procs import wait_until
from tests.unit.operator.conftest import T0, Env


def test_a_failed_sync_keeps_the_last_snapshot_and_the_thread_going(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = StateLoader(env.store.reader())
    state = loader.load()
    real_sync = loader.sync
    broken = threading.Event()
    broken.set()

    def flaky_sync(s: OperatorState) -> list[str]:
        if broken.is_set():
            raise sqlite3.OperationalError("database disk image is malformed")
        return real_sync(s)

    monkeypatch.setattr(loader, "sync", flaky_sync)
    syncer = Syncer(loader, state, 0.01, env.clock).start()
    started_ms = syncer.last_ok_ms
    try:
        assert wait_until(lambda: syncer.failures >= 2, 5)  # counted in a row, for /metrics
        assert 12 in state.sites  # still serving from what it had
        broken.clear()
        env.clock.advance(5_000)
        admin.add_site(env.store, 77, "late", ["late.example"], [], T0, os.urandom)
        assert wait_until(lambda: 77 in state.sites, 5)
        assert syncer.failures == 0 and syncer.last_ok_ms >= started_ms + 5_000
    finally:
        syncer.stop()
        loader.close()
