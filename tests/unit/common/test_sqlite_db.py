"""Opening a data dir's SQLite file: every way it can be unusable is the caller's error type with
one line naming the path, never a bare sqlite3 or OS exception."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from svc_common.errors import ErrorKind
from svc_common.sqlite_db import (
    WAL_SIZE_LIMIT_BYTES,
    StoreBusy,
    StoreFile,
    StoreUnavailable,
    StoreWatch,
    StoreWriteFailed,
    abandoned_stores,
    close_when_free,
    open_db,
    require_data_dir,
    write_transaction,
)
from tests.support.bad_stores import column_read_by_another_process, unusable_store


class Bad(Exception):
    pass


def test_opens_creates_and_applies_schema(tmp_path: Path) -> None:
    require_data_dir(tmp_path / "a" / "b", Bad, create=True)
    conn = open_db(tmp_path / "a" / "b" / "x.sqlite3", Bad, schema="CREATE TABLE t (v INTEGER);")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    finally:
        conn.close()


def test_data_dir_mistakes_name_the_dir(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (tmp_path / "absent", False, "does not exist"),
        (a_file, False, "is not a directory"),
        (a_file, True, "is not a directory"),
        (a_file / "sub", True, "cannot be created"),
    ]
    for directory, create, problem in cases:
        with pytest.raises(Bad) as exc:
            require_data_dir(directory, Bad, create=create)
        assert str(directory) in str(exc.value) and problem in str(exc.value)
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("kind", ["garbage", "empty", "damaged", "directory", "unwritable"])
def test_unusable_database_names_the_file(tmp_path: Path, kind: str) -> None:
    _, path = unusable_store(tmp_path, "x.sqlite3", kind)
    with pytest.raises(Bad) as exc:
        open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    message = str(exc.value)
    assert str(path) in message and "\n" not in message


def test_an_empty_file_is_refused_and_left_as_found(tmp_path: Path) -> None:
    """SQLite would take it for an empty database and make it a new store with nothing in it;
    it is a copy cut short, which whoever restores it needs to see as it is."""
    _, path = unusable_store(tmp_path, "x.sqlite3", "empty")
    for check in (True, False):
        with pytest.raises(Bad) as exc:
            open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);", check=check)
        assert "is an empty file (0 bytes), not a store" in str(exc.value)
    assert path.stat().st_size == 0
    assert [p.name for p in tmp_path.iterdir()] == ["x.sqlite3"]


def test_a_store_being_created_is_never_found_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes starting on a new data dir at once: the one that comes second, while the
    first is still making its store, must not find an empty file at the path and refuse it."""
    path, schema = tmp_path / "x.sqlite3", "CREATE TABLE IF NOT EXISTS t (v INTEGER);"
    real_connect = sqlite3.connect
    second: list[sqlite3.Connection] = []
    started = False

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        # The first process's first connect, right after it made its file: the second opens
        # the path at that moment.
        nonlocal started
        if not started:
            started = True
            second.append(open_db(path, Bad, schema=schema))
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    first = open_db(path, Bad, schema=schema)
    monkeypatch.undo()
    (other,) = second
    try:
        first.execute("INSERT INTO t VALUES (7)")
        assert other.execute("SELECT v FROM t").fetchall() == [(7,)]  # one store, not two
    finally:
        first.close()
        other.close()
    assert [p.name for p in tmp_path.iterdir()] == ["x.sqlite3"]  # no partial left behind


def test_the_wal_is_cut_back_after_a_checkpoint(tmp_path: Path) -> None:
    """A big write (a salt rotation) must not leave a WAL file of its size behind for good."""
    conn = open_db(tmp_path / "big.sqlite3", Bad, schema="CREATE TABLE t (b BLOB);")
    conn.execute("INSERT INTO t VALUES (?)", (os.urandom(3 * WAL_SIZE_LIMIT_BYTES),))
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    conn.execute("INSERT INTO t VALUES (x'00')")  # the WAL restarts from its beginning
    assert (tmp_path / "big.sqlite3-wal").stat().st_size <= WAL_SIZE_LIMIT_BYTES
    conn.close()


def test_a_write_lock_held_elsewhere_is_store_busy_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.sqlite3"
    ours = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    other = open_db(path, Bad)
    ours.execute("PRAGMA busy_timeout=50")  # the real 30 s, shortened for the test
    lock = threading.Lock()
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer, holding on
        with pytest.raises(StoreBusy) as caught, write_transaction(ours, lock) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        assert caught.value.kind is ErrorKind.UNAVAILABLE and caught.value.reason == "STORE_BUSY"
        assert not lock.locked()
        other.execute("ROLLBACK")
        with write_transaction(ours, lock) as conn:  # usable again once the lock is gone
            conn.execute("INSERT INTO t VALUES (2)")
        assert other.execute("SELECT v FROM t").fetchall() == [(2,)]
    finally:
        ours.close()
        other.close()


def test_a_failed_write_rolls_back(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "x.sqlite3", Bad, schema="CREATE TABLE t (v INTEGER);")
    try:
        with pytest.raises(ValueError), write_transaction(conn, threading.Lock()) as c:
            c.execute("INSERT INTO t VALUES (1)")
            raise ValueError("half-way")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        assert not conn.in_transaction
    finally:
        conn.close()


def test_a_full_disk_is_store_write_failed_and_nothing_is_written(tmp_path: Path) -> None:
    """SQLite rolls a transaction back by itself when the disk is full: the ROLLBACK that
    follows must not raise "no transaction is active" over the error that matters."""
    conn = open_db(tmp_path / "x.sqlite3", Bad, schema="CREATE TABLE t (b BLOB);")
    lock = threading.Lock()
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is full
        with pytest.raises(StoreWriteFailed) as caught, write_transaction(conn, lock) as c:
            c.execute("INSERT INTO t VALUES (?)", (os.urandom(20_000),))
        err = caught.value
        assert isinstance(err, StoreUnavailable)
        assert err.kind is ErrorKind.UNAVAILABLE and err.reason == "STORE_WRITE_FAILED"
        assert "full" in err.message and "full" in err.cause
        assert not lock.locked() and not conn.in_transaction
        conn.execute(f"PRAGMA max_page_count={pages * 100}")  # space freed
        with write_transaction(conn, lock) as c:
            c.execute("INSERT INTO t VALUES (x'01')")
        assert conn.execute("SELECT b FROM t").fetchall() == [(b"\x01",)]
    finally:
        conn.close()


def test_a_read_only_store_is_store_write_failed_and_the_transaction_ends(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);").close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        with (
            pytest.raises(StoreWriteFailed) as caught,
            write_transaction(conn, threading.Lock()) as c,
        ):
            c.execute("INSERT INTO t VALUES (1)")
        assert "readonly" in caught.value.cause
        # Not "retry": it fails the same way until the permissions change.
        assert caught.value.message.endswith("check that the store and its directory are writable")
        assert not conn.in_transaction
    finally:
        conn.close()


def test_a_statement_error_of_the_callers_own_is_not_the_stores(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "x.sqlite3", Bad, schema="CREATE TABLE t (v INTEGER);")
    try:
        with (
            pytest.raises(sqlite3.OperationalError),
            write_transaction(conn, threading.Lock()) as c,
        ):
            c.execute("INSERT INTO no_such_table VALUES (1)")
        assert not conn.in_transaction
    finally:
        conn.close()


def test_a_store_file_moved_from_its_path_takes_no_writes(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    watch, lock = StoreWatch(StoreFile.of(path)), threading.Lock()
    lost: list[bool] = []
    watch.on_lost(lambda: lost.append(True))
    try:
        with write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (1)")
        assert not lost
        path.rename(tmp_path / "moved.sqlite3")
        path.write_bytes(b"")  # a new file at the path: another inode
        refused = pytest.raises(StoreWriteFailed, match="removed or replaced")
        with refused, write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (2)")
        assert lost == [True]  # told once, however many writes are refused
        with refused, write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (2)")
        assert lost == [True] and watch.lost
        path.unlink()
        assert watch.file.replaced()
        assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
        assert not lock.locked() and not conn.in_transaction
    finally:
        conn.close()


def test_a_store_whose_wal_file_was_removed_takes_no_writes(tmp_path: Path) -> None:
    # Removed as "temporary files", the WAL took every write that followed into an unlinked
    # file: acknowledged, and gone at the next crash, with integrity_check saying ok.
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    watch, lock = StoreWatch(StoreFile.of(path)), threading.Lock()
    try:
        with write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (1)")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # emptied, not replaced: still fine
        with write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (2)")
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"x.sqlite3{suffix}").unlink()
        refused = pytest.raises(StoreWriteFailed, match="removed or replaced")
        with refused, write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (3)")
        # What was acknowledged (2, in the removed WAL file) is in the store file now: a
        # process opening the path after a crash of this one finds it.
        assert _rows_seen_by_another_process(path) == [1, 2]
    finally:
        conn.close()


def test_a_poll_finds_a_removed_wal_file_without_a_write_and_saves_what_it_held(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    now = [0.0]
    watch, lock = StoreWatch(StoreFile.of(path), monotonic=lambda: now[0]), threading.Lock()
    lost: list[bool] = []
    watch.on_lost(lambda: lost.append(True))
    try:
        with write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (1)")
        (tmp_path / "x.sqlite3-wal").unlink()
        assert not watch.poll(conn, lock)  # within the interval: not looked at
        now[0] = 1.0
        assert watch.poll(conn, lock) and lost == [True]
        assert _rows_seen_by_another_process(path) == [1]
    finally:
        conn.close()


def _watched_store(
    path: Path, rows: int, *, table_in_file: bool = False
) -> tuple[sqlite3.Connection, StoreWatch, threading.Lock]:
    """A store at `path` with its watch, and rows 0..rows-1 written one commit each (in its WAL
    file; `table_in_file`: the table itself checkpointed into the store file first)."""
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    if table_in_file:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    watch, lock = StoreWatch(StoreFile.of(path)), threading.Lock()
    for v in range(rows):
        with write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (?)", (v,))
    return conn, watch, lock


def _rows_seen_by_another_process(path: Path) -> list[int]:
    return [int(v) for v in column_read_by_another_process(path, "SELECT v FROM t ORDER BY v")]


def test_a_commit_refused_by_a_deferred_constraint_ends_the_transaction(tmp_path: Path) -> None:
    """Not only the disk fails a COMMIT: a transaction left open would keep the write lock
    from every other process and show this connection rows nobody committed."""
    schema = """
        CREATE TABLE p (id INTEGER PRIMARY KEY);
        CREATE TABLE c (pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);
    """
    conn = open_db(tmp_path / "x.sqlite3", Bad, schema=schema)
    other = open_db(tmp_path / "x.sqlite3", Bad)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        with pytest.raises(sqlite3.IntegrityError), write_transaction(conn, threading.Lock()) as c:
            c.execute("INSERT INTO c VALUES (42)")
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM c").fetchone()[0] == 0
        other.execute("BEGIN IMMEDIATE")  # the write lock is free
        other.execute("ROLLBACK")
    finally:
        conn.close()
        other.close()


def test_a_store_that_cannot_be_created_is_said_so_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at the first start: before, SQLite then made the file itself, left it empty,
    and every later start refused it as a damaged copy to restore."""
    import errno

    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    path = tmp_path / "x.sqlite3"
    with pytest.raises(Bad, match=r"x\.sqlite3 cannot be created: No space left on device"):
        open_db(path, Bad)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    open_db(path, Bad).close()  # room again: created as new


def test_without_hard_links_a_new_store_is_still_whole_and_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    conn.close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_size > 0
    assert sorted(os.listdir(tmp_path)) == ["x.sqlite3"]


_OTHER_WRITER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
for i in range(50):
    c.execute('INSERT INTO t VALUES (?)', (1000 + i,))
c.execute('CREATE TABLE other_made (x)')
c.close()
"""


def test_a_wal_file_another_process_made_since_is_not_checkpointed_over(tmp_path: Path) -> None:
    """The removed WAL file fully checkpointed (its frames all in the store file: the usual
    state after an autocheckpoint), another process may open the store, make a WAL file of its
    own and write. A checkpoint from the removed file then copied the wrong pages in ("file is
    not a database"), and the service's close did the same (a reviewer's runs): neither runs."""
    path = tmp_path / "x.sqlite3"
    conn, watch, lock = _watched_store(path, 200)
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    (tmp_path / "x.sqlite3-wal").unlink()
    other = subprocess.run(
        [sys.executable, "-c", _OTHER_WRITER, str(path)], capture_output=True, text=True, timeout=30
    )
    assert other.returncode == 0, other.stderr
    assert watch.check(conn)
    assert len(_rows_seen_by_another_process(path)) == 250
    close_when_free(conn, lock, 1.0, watch)  # a lost store's connection is left open
    assert abandoned_stores()
    assert len(_rows_seen_by_another_process(path)) == 250
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert check.execute("SELECT name FROM sqlite_master WHERE name = 'other_made'").fetchone()
    finally:
        check.close()


def test_a_read_after_the_store_closed_is_not_a_lost_store(tmp_path: Path) -> None:
    """Closing the last connection removes the WAL file; a read that outlived the stop must not
    take that for a WAL file removed under a running service (false error lines, on_lost)."""
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    now = [0.0]
    watch, lock = StoreWatch(StoreFile.of(path), monotonic=lambda: now[0]), threading.Lock()
    lost: list[bool] = []
    watch.on_lost(lambda: lost.append(True))
    close_when_free(conn, lock, 1.0, watch)
    assert not (tmp_path / "x.sqlite3-wal").exists()
    now[0] = 5.0
    with pytest.raises(sqlite3.ProgrammingError):
        watch.poll(conn, lock)
    assert lost == [] and not watch.lost


def test_a_store_whose_wal_file_was_removed_under_a_service_is_not_called_damaged(
    tmp_path: Path,
) -> None:
    """Until the service saves what the removed WAL file held, another process's quick check
    meets a short read; "restore it from a backup" would throw away what the service holds."""
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    try:
        with write_transaction(conn, threading.Lock()) as c:
            c.execute("INSERT INTO t VALUES (1)")
        (tmp_path / "x.sqlite3-wal").unlink()
        code = (
            "import sys; from pathlib import Path; from svc_common.sqlite_db import open_db\n"
            "try:\n    open_db(Path(sys.argv[1]), RuntimeError)\n"
            "except RuntimeError as e:\n    print(e)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30
        )
        assert "try again" in out.stdout and "restore it from a backup" in out.stdout, out
        assert "is damaged" not in out.stdout
    finally:
        conn.close()


def test_what_a_removed_wal_file_held_is_saved_though_a_reader_failed_meanwhile(
    tmp_path: Path,
) -> None:
    """Before the service's next look, an admin command or a backup that tries to read meets a
    short read (told to try again) and leaves an empty WAL file at the path; that is no writer,
    and the service still saves what the removed file held (a reviewer's run lost 5 of 5
    acknowledged opt-outs so)."""
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    watch, lock = StoreWatch(StoreFile.of(path)), threading.Lock()
    try:
        for v in range(5):
            with write_transaction(conn, lock, watch) as c:
                c.execute("INSERT INTO t VALUES (?)", (v,))
        (tmp_path / "x.sqlite3-wal").unlink()
        code = (
            "import sys; from pathlib import Path\n"
            "from svc_common.store_backup import backup\n"
            "try:\n"
            "    backup(Path(sys.argv[1]), Path(sys.argv[2]), RuntimeError, lambda c: None)\n"
            "except RuntimeError as e:\n    print(e)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(path), str(tmp_path / "copy.sqlite3")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "try again" in out.stdout, out
        assert (tmp_path / "x.sqlite3-wal").exists()  # the failed reader's, empty
        assert watch.check(conn)
        assert _rows_seen_by_another_process(path) == [0, 1, 2, 3, 4]
    finally:
        close_when_free(conn, lock, 1.0, watch)


def _rows(path: Path) -> list[int]:
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        return [v for (v,) in check.execute("SELECT v FROM t ORDER BY v")]
    finally:
        check.close()


def _aside(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("x.sqlite3.lost-*"))


def test_wal_and_index_removed_then_another_writer_leaves_a_copy_aside(tmp_path: Path) -> None:
    """The WAL file and its index removed together ("temporary files"), another process reads
    the store file alone, as a whole store, and writes. What this connection acknowledged can
    no longer go into the store file without overwriting that write: it goes into a copy
    beside it, for whoever merges them (a reviewer's run lost a disable so)."""
    path = tmp_path / "x.sqlite3"
    conn, watch, lock = _watched_store(path, 5, table_in_file=True)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"x.sqlite3{suffix}").unlink()
    other = subprocess.run(
        [sys.executable, "-c", _OTHER_WRITER, str(path)], capture_output=True, text=True, timeout=30
    )
    assert other.returncode == 0, other.stderr
    assert watch.check(conn)
    (aside,) = _aside(tmp_path)
    assert _rows(aside) == [0, 1, 2, 3, 4]  # all this connection acknowledged
    # the other's, untouched (read by another process: this one shares its stale index)
    assert _rows_seen_by_another_process(path) == list(range(1000, 1050))
    assert aside.stat().st_mode & 0o077 == 0
    close_when_free(conn, lock, 1.0, watch)


def test_an_index_removed_alone_is_a_lost_store_and_saved_in_place(tmp_path: Path) -> None:
    """Another process opening the store would build an index of its own, and two writers with
    two indexes overwrite each other's frames (a reviewer's run lost 3 committed rows so, the
    service never the wiser). Found before anyone opened it, what the WAL file holds is saved
    into the store file."""
    path = tmp_path / "x.sqlite3"
    conn, watch, lock = _watched_store(path, 5)
    (tmp_path / "x.sqlite3-shm").unlink()
    refused = pytest.raises(StoreWriteFailed, match="removed or replaced")
    with refused, write_transaction(conn, lock, watch) as c:
        c.execute("INSERT INTO t VALUES (5)")
    assert _aside(tmp_path) == []
    assert _rows_seen_by_another_process(path) == [0, 1, 2, 3, 4]
    close_when_free(conn, lock, 1.0, watch)


def test_a_file_moved_over_a_running_store_gets_none_of_its_wal(tmp_path: Path) -> None:
    """Another store moved over the path (a backup restored by `mv`): the old WAL file stayed
    at the path, and a restart read the moved-in file with the old store's frames over it. The
    old store's view goes aside, and its WAL file is emptied."""
    path = tmp_path / "x.sqlite3"
    other = open_db(tmp_path / "other.sqlite3", Bad, schema="CREATE TABLE t (v INTEGER);")
    other.execute("INSERT INTO t VALUES (100)")
    other.close()
    conn, watch, lock = _watched_store(path, 5)
    os.replace(tmp_path / "other.sqlite3", path)
    assert watch.check(conn)
    (aside,) = _aside(tmp_path)
    assert _rows(aside) == [0, 1, 2, 3, 4]
    assert _rows_seen_by_another_process(path) == [100]  # the moved-in store, as it was
    close_when_free(conn, lock, 1.0, watch)


_ADMIN_WRITE = """
import sys
from pathlib import Path
from svc_common.sqlite_db import open_db
c = open_db(Path(sys.argv[1]), RuntimeError)
c.execute("INSERT INTO t VALUES (77)")
c.close()
"""


def test_an_index_removed_twice_around_another_writer_keeps_its_write(tmp_path: Path) -> None:
    """The index removed, an admin command builds its own from the WAL file (still this
    connection's) and writes after this connection's frames; the index removed again before
    the service looks. A checkpoint from the service's stale index then truncated the admin's
    committed frames away (a reviewer's run: an acknowledged disable undone). The WAL file is
    still the one at the path, so its frames need no saving: left to the next opener."""
    path = tmp_path / "x.sqlite3"
    conn, watch, lock = _watched_store(path, 3)
    (tmp_path / "x.sqlite3-shm").unlink()
    admin = subprocess.run(
        [sys.executable, "-c", _ADMIN_WRITE, str(path)], capture_output=True, text=True, timeout=30
    )
    assert admin.returncode == 0, admin.stderr
    (tmp_path / "x.sqlite3-shm").unlink()
    assert watch.check(conn)
    close_when_free(conn, lock, 1.0, watch)
    assert _rows_seen_by_another_process(path) == [0, 1, 2, 77]


def test_a_symlinked_stores_wal_file_is_watched_where_sqlite_keeps_it(tmp_path: Path) -> None:
    """SQLite names the WAL and index files after the file the path resolves to: watched beside
    the link, a removed WAL file went unseen and a crash lost what it held (a reviewer's run)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "data").mkdir()
    link = tmp_path / "data" / "x.sqlite3"
    link.symlink_to(tmp_path / "real" / "x.sqlite3")
    conn = open_db(link, Bad, schema="CREATE TABLE t (v INTEGER);")
    watch, lock = StoreWatch(StoreFile.of(link)), threading.Lock()
    try:
        with write_transaction(conn, lock, watch) as c:
            c.execute("INSERT INTO t VALUES (1)")
        (tmp_path / "real" / "x.sqlite3-wal").unlink()
        assert watch.check(conn)
        assert _rows_seen_by_another_process(link) == [1]
    finally:
        close_when_free(conn, lock, 1.0, watch)


_WRITE_AND_CHECKPOINT = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("INSERT INTO t VALUES (77)")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.close()
"""


def test_an_index_gone_with_the_store_file_written_since_goes_aside(tmp_path: Path) -> None:
    """WAL and index removed, another process writes and checkpoints into the store file, and
    its index is removed too: no file says it was there, but the store file changed. A
    checkpoint from this connection's stale index wrote older pages over its row (a reviewer's
    run); this connection's view goes aside instead, and the row stays."""
    path = tmp_path / "x.sqlite3"
    conn, watch, lock = _watched_store(path, 3, table_in_file=True)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"x.sqlite3{suffix}").unlink()
    other = subprocess.run(
        [sys.executable, "-c", _WRITE_AND_CHECKPOINT, str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    (tmp_path / "x.sqlite3-shm").unlink(missing_ok=True)
    assert watch.check(conn)
    (aside,) = _aside(tmp_path)
    assert _rows(aside) == [0, 1, 2]
    close_when_free(conn, lock, 1.0, watch)
    assert _rows_seen_by_another_process(path) == [77]


def test_a_symlinked_store_flattened_while_running_goes_aside(tmp_path: Path) -> None:
    """The link replaced by its file (same inode): the next opener uses the WAL file beside the
    new name and never reads this connection's, so its acknowledged rows went unseen and were
    lost at the stop (a reviewer's run). Found lost, the view goes aside."""
    (tmp_path / "real").mkdir()
    (tmp_path / "data").mkdir()
    link = tmp_path / "data" / "x.sqlite3"
    link.symlink_to(tmp_path / "real" / "x.sqlite3")
    conn = open_db(link, Bad, schema="CREATE TABLE t (v INTEGER);")
    watch, lock = StoreWatch(StoreFile.of(link)), threading.Lock()
    with write_transaction(conn, lock, watch) as c:
        c.execute("INSERT INTO t VALUES (1)")
    os.rename(tmp_path / "real" / "x.sqlite3", link)
    assert watch.check(conn)
    (aside,) = sorted((tmp_path / "data").glob("x.sqlite3.lost-*"))
    assert _rows(aside) == [1]
    close_when_free(conn, lock, 1.0, watch)


def test_another_writer_between_the_look_and_the_commit_is_not_taken_for_this_one(
    tmp_path: Path,
) -> None:
    """The store lost while a write runs (after its look, before its commit), and another
    process writes and checkpoints into the store file meanwhile: the file as seen after the
    commit includes that write, and a save in place then wrote older pages over it (a
    reviewer's run). The commit records the file only while the store is whole."""
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the table in the store file
    watch, lock = StoreWatch(StoreFile.of(path)), threading.Lock()
    with write_transaction(conn, lock, watch) as c:
        c.execute("INSERT INTO t VALUES (0)")
    with write_transaction(conn, lock, watch) as c:
        c.execute("INSERT INTO t VALUES (1)")
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"x.sqlite3{suffix}").unlink()
        other = subprocess.run(
            [sys.executable, "-c", _WRITE_AND_CHECKPOINT, str(path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert other.returncode == 0, other.stderr
        (tmp_path / "x.sqlite3-shm").unlink(missing_ok=True)
    assert watch.check(conn)
    (aside,) = _aside(tmp_path)
    assert _rows(aside) == [0, 1]
    close_when_free(conn, lock, 1.0, watch)
    assert _rows_seen_by_another_process(path) == [77]


def test_looking_for_a_replaced_store_builds_no_new_file_names(tmp_path: Path) -> None:
    """Each look (every write, and once a second) built the "-wal" and "-shm" paths anew, and
    pathlib interned each new name, which died at once: the interned-string table was rebuilt
    every few thousand writes, and the server-mode publisher's memory crept up in ~1 MB steps
    (soak review, 85 minutes at 20 calls/s)."""
    path = tmp_path / "x.sqlite3"
    conn = open_db(path, Bad, schema="CREATE TABLE t (v INTEGER);")
    try:
        store_file = StoreFile.of(path)
        assert not store_file.replaced()
        wal, shm = store_file.wal_path, store_file.shm_path
        assert (wal.name, shm.name) == ("x.sqlite3-wal", "x.sqlite3-shm")
        assert not store_file.replaced()
        assert store_file.wal_path is wal and store_file.shm_path is shm
    finally:
        conn.close()
