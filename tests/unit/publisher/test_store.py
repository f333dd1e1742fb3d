"""The SQLite store: acknowledged writes survive kill -9; compare-and-set semantics."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from publisher_svc.model import Identity
from publisher_svc.store import SqliteStore, StoreError
from publisher_svc.store.sqlite import StoredIdentity
from svc_common import sqlite_db

IDENT = Identity("A4tok", "rt-1", 3_000, 1_000, 30_000, "k")


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from publisher_svc.model import Identity
        from publisher_svc.store import SqliteStore
        s = SqliteStore({str(tmp_path)!r})
        ident = Identity("A4tok", "rt-1", 3000, 1000, 30000, "k")
        s.put_unless_site_optout("u1", "email:h1", ident, 5)
        s.record_operator_optout("email:h2", 6)
        s.set_site_optout("u2", True, 7)
        print("acked", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.stdout.strip() == "acked"
    assert proc.returncode == -signal.SIGKILL
    store = SqliteStore(tmp_path)
    stored = store.get("u1")
    assert stored is not None and stored.identity == IDENT and stored.dii_key == "email:h1"
    assert store.is_operator_optout("email:h2")
    assert store.is_site_optout("u2")
    store.close()
    assert os.path.exists(tmp_path / SqliteStore.FILE_NAME)


def test_reads_do_not_wait_for_a_write_waiting_on_another_process(tmp_path: Path) -> None:
    # Another publisher process on the data dir holds the write lock; this one's write waits
    # for it (up to the 30 s busy timeout). An impression only reads: it must not wait too.
    store = SqliteStore(tmp_path)
    store.put_unless_site_optout("u1", "email:h1", IDENT, 5)
    other = sqlite3.connect(tmp_path / SqliteStore.FILE_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    writer = threading.Thread(
        target=store.put_unless_site_optout, args=("u2", "email:h2", IDENT, 6)
    )
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while not store._lock.locked():  # the write is in, waiting on SQLite's lock
            assert time.monotonic() < deadline and writer.is_alive()
            time.sleep(0.01)
        seen: list[object] = []
        reader = threading.Thread(
            target=lambda: seen.extend(
                [
                    store.get("u1"),
                    store.is_site_optout("u1"),
                    store.is_operator_optout("email:h1"),
                    store.ended_status("u1"),
                    [d.user_id for d in store.due(10**12, 10)],
                    store.count(),
                ]
            )
        )
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "a read waited behind the write"
        assert writer.is_alive()  # still waiting: the reads went past it
        got = seen[0]
        assert isinstance(got, StoredIdentity) and got.identity == IDENT
        assert seen[1:] == [False, False, None, ["u1"], 1]
    finally:
        other.execute("COMMIT")
        writer.join(timeout=40)
        other.close()
    assert store.get("u2") is not None  # committed once the other process let go
    store.close()


def test_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    with store._lock:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_replace_and_delete_only_if_current(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put_unless_site_optout("u", "email:h", IDENT, 1)
    newer = Identity("A4tok2", "rt-2", 6_000, 4_000, 60_000, "k2")
    assert not store.replace_if_current("u", "rt-other", newer, 2, by_user=True)
    assert store.replace_if_current("u", "rt-1", newer, 2, by_user=True)
    assert not store.end_if_current("u", "rt-1", 3)
    assert store.get("u").identity == newer  # type: ignore[union-attr]  # a None fails the test here anyway
    assert store.ended_status("u") is None
    assert store.end_if_current("u", "rt-2", 3)
    assert store.get("u") is None and store.ended_status("u") == "LOGIN_REQUIRED"
    store.close()


def test_an_identity_is_not_stored_over_a_site_optout_that_came_first(tmp_path: Path) -> None:
    # Login checks the site opt-out before it asks the operator; one recorded meanwhile must
    # still win, or the user would be tracked again after opting out.
    store = SqliteStore(tmp_path)
    store.set_site_optout("u", True, 1)
    assert not store.put_unless_site_optout("u", "email:h", IDENT, 2)
    assert store.get("u") is None
    store.set_site_optout("u", False, 3)
    assert store.put_unless_site_optout("u", "email:h", IDENT, 4)
    assert store.get("u") is not None
    store.close()


def test_how_an_identity_ended_is_kept_until_login_logout_or_site_optout(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put_unless_site_optout("u", "email:h", IDENT, 1)
    store.record_operator_optout("email:other", 2, "u")  # another DII's: not this identity
    assert store.get("u") is not None and store.ended_status("u") is None
    store.record_operator_optout("email:h", 2, "u")
    assert store.get("u") is None and store.ended_status("u") == "OPTOUT"
    store.close()
    store = SqliteStore(tmp_path)  # durable
    assert store.ended_status("u") == "OPTOUT"
    store.put_unless_site_optout("u", "email:h2", IDENT, 3)
    assert store.ended_status("u") is None
    for clear in (lambda: store.delete("u"), lambda: store.set_site_optout("u", True, 5)):
        store.put_unless_site_optout("u", "email:h", IDENT, 4)
        assert store.end_if_current("u", IDENT.refresh_token, 4)
        assert store.ended_status("u") == "LOGIN_REQUIRED"
        clear()
        assert store.ended_status("u") is None
    store.close()


def test_a_login_optout_records_every_held_dii_and_ends_the_identity_in_one_write(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)
    store.put_unless_site_optout("u", "email:h", IDENT, 1)
    store.end_as_opted_out("u", {"email:h": 2, "email:h2": 3}, 3)
    assert store.get("u") is None and store.ended_status("u") == "OPTOUT"
    store.end_as_opted_out("", {"phone:h3": 4}, 4)  # a client-side refresh's: no user
    store.close()
    store = SqliteStore(tmp_path)  # durable
    assert all(store.is_operator_optout(k) for k in ("email:h", "email:h2", "phone:h3"))
    assert store.ended_status("") is None
    store.close()


def test_site_optout_blocks_put_and_deletes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put_unless_site_optout("u", "email:h", IDENT, 1)
    store.set_site_optout("u", True, 2)
    assert store.get("u") is None
    assert not store.put_unless_site_optout("u", "email:h", IDENT, 3)
    store.set_site_optout("u", False, 4)
    assert store.put_unless_site_optout("u", "email:h", IDENT, 5)
    store.close()


def test_due_uses_next_attempt_and_postpone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put_unless_site_optout("a", "email:a", IDENT, 1)  # refresh_from 1000
    store.put_unless_site_optout("b", "email:b", Identity("t", "rt-b", 9, 5_000, 9, "k"), 1)
    assert [d.user_id for d in store.due(1_000, 10)] == ["a"]
    store.postpone("a", "rt-1", 2_000, 1)
    assert store.due(1_500, 10) == []
    assert [d.user_id for d in store.due(5_000, 10)] == ["a", "b"]
    assert store.get("a").failed_attempts == 1  # type: ignore[union-attr]  # a None fails the test here anyway
    with store._lock:
        plan = store._db.execute(
            "EXPLAIN QUERY PLAN SELECT user_id, next_attempt_at FROM identities"
            " WHERE next_attempt_at <= 5 ORDER BY next_attempt_at LIMIT 5"
        ).fetchall()
    assert "identities_next_attempt" in str(plan)
    store.close()


# The schema of stores made before `used_since_refresh`, with one identity.
_OLD_IDENTITIES = """
CREATE TABLE identities (
    user_id TEXT PRIMARY KEY,
    dii_key TEXT NOT NULL,
    advertising_token TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    identity_expires INTEGER NOT NULL,
    refresh_from INTEGER NOT NULL,
    refresh_expires INTEGER NOT NULL,
    refresh_response_key TEXT NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX identities_refresh_from ON identities (refresh_from);
CREATE INDEX identities_next_attempt ON identities (next_attempt_at);
CREATE TABLE operator_optouts (dii_key TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE site_optouts (user_id TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE ended_identities (
    user_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO identities
    VALUES ('old', 'email:h', 'A4tok', 'rt-1', 3000, 1000, 30000, 'k', 1000, 0, 1);
"""


def _old_store(directory: Path) -> Path:
    db = directory / SqliteStore.FILE_NAME
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_OLD_IDENTITIES)
    conn.close()
    return db


def test_a_store_made_before_the_used_column_gets_it_and_its_identities_count_as_used(
    tmp_path: Path,
) -> None:
    _old_store(tmp_path)
    store = SqliteStore(tmp_path)
    stored = store.get("old")
    assert stored is not None and stored.identity == IDENT and stored.used_since_refresh
    store.close()
    SqliteStore(tmp_path).close()  # opened again: the column is there, nothing to add


def test_a_store_made_before_the_dii_index_gets_it(tmp_path: Path) -> None:
    # An opt-out ends every identity of its DII (record_operator_optout): without the index,
    # each would scan the whole table inside the write transaction.
    db = _old_store(tmp_path)
    SqliteStore(tmp_path).close()
    conn = sqlite3.connect(db)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN DELETE FROM identities WHERE dii_key = ?", ("email:h",)
        ).fetchall()
    finally:
        conn.close()
    assert any("identities_dii" in str(row) for row in plan), plan


def test_an_old_store_another_process_keeps_locked_is_a_store_error_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its column cannot be added while another process holds the write lock: a StoreError,
    which `serve` reports in one line (exit 2), not a raw sqlite3 error."""
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", 0.2)  # the real 30 s, shortened
    other = sqlite3.connect(_old_store(tmp_path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked by another process"):
            SqliteStore(tmp_path)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store = SqliteStore(tmp_path)  # once free, it opens
    assert store.get("old") is not None
    store.close()


def test_a_store_of_a_newer_release_is_refused_at_open_and_a_new_one_stamped(
    tmp_path: Path,
) -> None:
    # After a downgrade the store opened, health said SERVING, and every Login was INTERNAL.
    SqliteStore(tmp_path).close()
    path = tmp_path / SqliteStore.FILE_NAME
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with pytest.raises(StoreError) as exc:
        SqliteStore(tmp_path)
    assert "schema version 2, newer than this release's 1" in str(exc.value)
    assert str(path) in str(exc.value)


def test_the_refreshers_pass_finds_a_lost_store(tmp_path: Path) -> None:
    """The background refresher asks for due identities every interval: an idle publisher finds
    its WAL file removed that way, within a second, with no caller's read."""
    store = SqliteStore(tmp_path)
    lost: list[bool] = []
    store.on_lost(lambda: lost.append(True))
    try:
        (tmp_path / (SqliteStore.FILE_NAME + "-wal")).unlink()
        time.sleep(1.1)  # past the watch's once-a-second throttle
        store.due(0, 10)
        assert lost == [True]
    finally:
        store.close()
