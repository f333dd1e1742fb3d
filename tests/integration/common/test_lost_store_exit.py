"""A command that leaves a lost store's connection open (sqlite_db.close_when_free) ends with
os._exit, whatever kind of command and however it ends: the interpreter's exit would close the
connection, and SQLite's close would checkpoint the WAL file it still has open (removed from
the path) over another process's, and remove that one's WAL file by name."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A console module (run_console imports it and calls main): its store's WAL file, every frame
# checkpointed, is removed; another process writes; the store is found lost and closed.
_MODULE = textwrap.dedent(
    """
    import subprocess, sys, threading
    from pathlib import Path
    from svc_common.sqlite_db import StoreFile, StoreWatch, close_when_free, open_db
    from svc_common.sqlite_db import write_transaction

    OTHER = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None)\\n"
        "for i in range(50): c.execute('INSERT INTO t VALUES (?)', (1000 + i,))\\n"
        "c.close()"
    )

    def main():
        path = Path(sys.argv[2])
        conn = open_db(path, RuntimeError, schema="CREATE TABLE t (v INTEGER);")
        watch, lock = StoreWatch(StoreFile.of(path)), threading.Lock()
        for v in range(200):
            with write_transaction(conn, lock, watch) as c:
                c.execute("INSERT INTO t VALUES (?)", (v,))
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        Path(str(path) + "-wal").unlink()
        subprocess.run([sys.executable, "-c", OTHER, str(path)], check=True)
        assert watch.check(conn)
        close_when_free(conn, lock, 1.0, watch)
        if sys.argv[3] == "raise":
            raise RuntimeError("the command failed after its store was lost")
        return 0
    """
)


@pytest.mark.parametrize(
    ("command", "how", "rc"),
    [("serve", "return", 0), ("list", "return", 0), ("list", "raise", 2)],
)
def test_a_lost_stores_connection_is_not_closed_at_exit(
    tmp_path: Path, command: str, how: str, rc: int
) -> None:
    (tmp_path / "lostcli.py").write_text(_MODULE)
    store = tmp_path / "x.sqlite3"
    entry = (
        "import sys; sys.path.insert(0, sys.argv[4]); "
        "from svc_common.stop_signals import run_console; "
        "sys.argv = ['lost', sys.argv[1], sys.argv[2], sys.argv[3]]; "
        "sys.exit(run_console('lostcli'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", entry, command, str(store), how, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == rc, done.stderr
    if how == "raise":
        assert "the command failed after its store was lost" in done.stderr
    check = sqlite3.connect(store)
    try:
        assert check.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert check.execute("SELECT count(*) FROM t").fetchone() == (250,)
    finally:
        check.close()
