"""Backups taken while a service writes, and restores into a new data dir: one consistent,
self-contained, private file; every refusal leaves nothing behind."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from svc_common import store_backup
from svc_common.sqlite_db import open_db
from tests.support.bad_stores import unusable_store


class Bad(Exception):
    pass


CHECK = store_backup.requires_tables(Bad, "test", "t", version=1)


def _store(d: Path) -> sqlite3.Connection:
    d.mkdir(exist_ok=True)
    return open_db(d / "s.sqlite3", Bad, schema="CREATE TABLE IF NOT EXISTS t (v INTEGER);")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_is_private(tmp_path: Path) -> None:
    conn = _store(tmp_path / "d")
    conn.execute("INSERT INTO t VALUES (1)")  # the WAL and its index exist while it is open
    for name in ("s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm"):
        assert _mode(tmp_path / "d" / name) == 0o600, name
    conn.close()
    # A store path that is a symlink to a file yet to be made (a volume, say): the file too.
    (tmp_path / "vol").mkdir()
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "s.sqlite3").symlink_to(tmp_path / "vol" / "s.sqlite3")
    _store(tmp_path / "e").close()
    assert _mode(tmp_path / "vol" / "s.sqlite3") == 0o600


def test_a_backup_holds_what_is_still_in_the_wal_and_is_one_private_file(tmp_path: Path) -> None:
    live = _store(tmp_path / "d")
    try:
        live.execute("PRAGMA wal_autocheckpoint=0")  # the rows stay in the WAL file
        live.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
        assert (tmp_path / "d" / "s.sqlite3-wal").stat().st_size > 0
        done = store_backup.backup(tmp_path / "d" / "s.sqlite3", tmp_path / "b", Bad, CHECK)
        live.execute("INSERT INTO t VALUES (100)")  # after the snapshot
    finally:
        live.close()
    assert done.path == tmp_path / "b" and done.bytes == (tmp_path / "b").stat().st_size
    assert _mode(tmp_path / "b") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "d"]  # no -wal, no partial
    copy = sqlite3.connect(tmp_path / "b")
    try:
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert copy.execute("SELECT count(*), max(v) FROM t").fetchone() == (100, 99)
    finally:
        copy.close()


def test_backup_mistakes_name_the_file_and_leave_nothing(tmp_path: Path) -> None:
    _store(tmp_path / "d").close()
    store = tmp_path / "d" / "s.sqlite3"
    (tmp_path / "taken").write_text("mine")
    cases = [
        (tmp_path / "absent" / "s.sqlite3", tmp_path / "b1", "no store at"),
        (store, tmp_path / "taken", "already exists"),
        (store, tmp_path / "no-dir" / "b", "does not exist"),
    ]
    for source, target, problem in cases:
        with pytest.raises(Bad, match=problem):
            store_backup.backup(source, target, Bad, CHECK)
    not_ours = store_backup.requires_tables(Bad, "other", "t", "u", version=1)
    with pytest.raises(Bad, match=r"not a store of the other \(it has no u table\)"):
        store_backup.backup(store, tmp_path / "b2", Bad, not_ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "taken"]
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_newer_releases_store_is_neither_backed_up_nor_restored(tmp_path: Path) -> None:
    """Upgrade review: the publisher's and the SSP's backup and restore took a store of a newer
    schema and said done; only the service's next open refused it."""
    live = _store(tmp_path / "d")
    live.execute("INSERT INTO t VALUES (7)")
    live.execute("PRAGMA user_version = 1")
    live.close()
    store_backup.backup(tmp_path / "d" / "s.sqlite3", tmp_path / "ok", Bad, CHECK)  # its own
    newer = sqlite3.connect(tmp_path / "d" / "s.sqlite3")
    newer.execute("PRAGMA user_version = 2")
    newer.close()
    said = "schema version 2, newer than this release's 1"
    with pytest.raises(Bad, match=said):
        store_backup.backup(tmp_path / "d" / "s.sqlite3", tmp_path / "b", Bad, CHECK)
    shutil.copy(tmp_path / "d" / "s.sqlite3", tmp_path / "newer-backup")
    with pytest.raises(Bad, match=said):
        store_backup.restore(tmp_path / "newer-backup", tmp_path / "new", "s.sqlite3", Bad, CHECK)
    assert not (tmp_path / "b").exists() and not (tmp_path / "new").exists()


def test_restore_makes_a_working_store_in_a_new_data_dir_only(tmp_path: Path) -> None:
    live = _store(tmp_path / "d")
    live.execute("INSERT INTO t VALUES (7)")
    live.close()
    store_backup.backup(tmp_path / "d" / "s.sqlite3", tmp_path / "b", Bad, CHECK)
    done = store_backup.restore(tmp_path / "b", tmp_path / "new", "s.sqlite3", Bad, CHECK)
    assert done.path == tmp_path / "new" / "s.sqlite3" and _mode(done.path) == 0o600
    again = _store(tmp_path / "new")  # as the service opens it
    try:
        assert again.execute("SELECT v FROM t").fetchall() == [(7,)]
        assert again.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        again.close()
    with pytest.raises(Bad, match="already holds a store"):
        store_backup.restore(tmp_path / "b", tmp_path / "new", "s.sqlite3", Bad, CHECK)
    # The backup itself is read, never changed (no WAL switched on beside it).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "d", "new"]
    # A copy a lost store left aside (sqlite_db.StoreWatch) is no store of the dir's.
    (tmp_path / "aside").mkdir()
    (tmp_path / "aside" / "s.sqlite3.lost-12-34").write_bytes(b"")
    store_backup.restore(tmp_path / "b", tmp_path / "aside", "s.sqlite3", Bad, CHECK)


@pytest.mark.parametrize("kind", ["garbage", "damaged", "foreign"])
def test_restore_refuses_what_is_not_a_good_backup_and_leaves_no_data_dir(
    tmp_path: Path, kind: str
) -> None:
    _, bad = unusable_store(tmp_path, "b", kind, table="other")
    with pytest.raises(Bad) as caught:
        store_backup.restore(bad, tmp_path / "new" / "a" / "b", "s.sqlite3", Bad, CHECK)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "new").exists()  # nor any directory it made on the way
    with pytest.raises(Bad, match="no backup at"):
        store_backup.restore(tmp_path / "absent", tmp_path / "new", "s.sqlite3", Bad, CHECK)


def _backup_args(to: Path) -> argparse.Namespace:
    return argparse.Namespace(command="backup", to=str(to))


def _signal_at_fsync(monkeypatch: pytest.MonkeyPatch, signum: int, nth: int) -> None:
    """Delivers `signum` to this process at the `nth` fsync of a copy: 1 before its link, 2
    after it."""
    real, seen = store_backup._fsync, []

    def fsync(path: Path) -> None:
        real(path)
        seen.append(path)
        if len(seen) == nth:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(store_backup, "_fsync", fsync)


def test_a_backup_stopped_before_its_copy_is_named_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(tmp_path / "d").close()
    _signal_at_fsync(monkeypatch, signal.SIGTERM, 1)
    with pytest.raises(Bad, match="stopped by SIGTERM before it finished"):
        store_backup.run_command(
            _backup_args(tmp_path / "b"), tmp_path / "d", "s.sqlite3", Bad, CHECK
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_a_backup_stopped_once_named_is_whole_and_reported_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _store(tmp_path / "d").close()
    _signal_at_fsync(monkeypatch, signal.SIGTERM, 2)
    rc = store_backup.run_command(
        _backup_args(tmp_path / "b"), tmp_path / "d", "s.sqlite3", Bad, CHECK
    )
    assert rc == 0 and json.loads(capsys.readouterr().out)["backup"] == str(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "d"]


def test_a_signal_the_caller_ignores_stays_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(tmp_path / "d").close()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        _signal_at_fsync(monkeypatch, signal.SIGHUP, 1)
        rc = store_backup.run_command(
            _backup_args(tmp_path / "b"), tmp_path / "d", "s.sqlite3", Bad, CHECK
        )
        assert rc == 0 and (tmp_path / "b").is_file()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_backup_runs_off_the_main_thread(tmp_path: Path) -> None:
    _store(tmp_path / "d").close()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            store_backup.run_command(
                _backup_args(tmp_path / "b"), tmp_path / "d", "s.sqlite3", Bad, CHECK
            )
        except BaseException as exc:  # reported to the test thread
            failures.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert failures == [] and (tmp_path / "b").is_file()
