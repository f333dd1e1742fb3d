"""An operator starting with a longer token lifetime than its store records must write it, and
another process (a long `salts rotate`) may hold the store's write lock meanwhile: the start says
so, and a stop signal ends the wait. One wait of SQLite's whole busy timeout held the main
thread, and SIGTERM, for 30 s with nothing logged (misconfiguration review)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.store import OperatorStore
from operator_svc.store.sqlite_store import LONGEST_LIFETIME_META
from svc_common.clock import ManualClock

T0 = 1_800_000_000_000
DAY_S = 86_400


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    store.close()
    return tmp_path


@contextlib.contextmanager
def write_locked(data_dir: Path) -> Iterator[None]:
    """Another process's write transaction (a connection of its own holds it just the same)."""
    conn = sqlite3.connect(data_dir / "operator.sqlite3", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _open_in_thread(
    config: OperatorConfig, stop: threading.Event
) -> tuple[threading.Thread, list[Operator]]:
    opened: list[Operator] = []

    def run() -> None:
        opened.append(
            Operator.open(config, clock=ManualClock(T0), rng=os.urandom, give_up=stop.is_set)
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, opened


def test_a_stop_ends_the_wait_for_another_process_lock(data_dir: Path) -> None:
    config = OperatorConfig(data_dir=data_dir, token_lifetime_s=5 * DAY_S)
    stop = threading.Event()
    with capture_logs() as logs, write_locked(data_dir):
        thread, opened = _open_in_thread(config, stop)
        thread.join(1.0)
        assert thread.is_alive()  # waiting on the lock
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "waiting_for_store_lock"
        ]
        stop.set()
        thread.join(10.0)  # the lock is still held: only the stop can have ended the wait
        assert not thread.is_alive() and opened
    opened[0].close()


def test_the_start_records_its_lifetime_once_the_lock_is_free(data_dir: Path) -> None:
    config = OperatorConfig(data_dir=data_dir, token_lifetime_s=5 * DAY_S)
    with write_locked(data_dir):
        thread, opened = _open_in_thread(config, threading.Event())
        thread.join(0.5)
        assert thread.is_alive()
    thread.join(10.0)
    assert opened
    opened[0].close()
    store = OperatorStore.open(data_dir)
    try:
        assert store.meta_int(LONGEST_LIFETIME_META) == 5 * DAY_S
    finally:
        store.close()
