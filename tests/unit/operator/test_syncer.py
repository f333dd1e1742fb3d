"""The sync thread keeps a serving operator in step with the store, through failed syncs."""

from __future__ import annotations

import os
import sqlite3

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
    calls: list[int] = []

    def flaky_sync(s: OperatorState) -> list[str]:
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database disk image is malformed")
        return real_sync(s)

    monkeypatch.setattr(loader, "sync", flaky_sync)
    syncer = Syncer(loader, state, 0.01).start()
    try:
        assert wait_until(lambda: len(calls) >= 2, 5)
        assert 12 in state.sites  # still serving from what it had
        admin.add_site(env.store, 77, "late", ["late.example"], [], T0, os.urandom)
        assert wait_until(lambda: 77 in state.sites, 5)
    finally:
        syncer.stop()
        loader.close()
