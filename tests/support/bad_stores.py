"""Data dirs whose SQLite store cannot be used, one of each kind, for the CLI tests of all three
services (each must answer with one stderr line naming the path and exit 2)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

# /proc takes no new files or directories, whoever asks (root included).
UNWRITABLE_DIR = Path("/proc/self")
UNCREATABLE_DIR = Path("/proc/nonexistent/data")


def unusable_store(
    tmp_path: Path, db_name: str, kind: str, table: str = "meta"
) -> tuple[Path, Path]:
    """Makes a data dir of `kind`; returns it (for --data-dir) and the path the error must name.

    Kinds: garbage (not SQLite), empty (0 bytes: a copy cut short), directory (where the file
    goes), foreign (SQLite with someone else's `table`), damaged (a valid header and schema,
    pages after them overwritten), unwritable, file (the data dir is a file), uncreatable,
    absent."""
    db = tmp_path / db_name
    if kind == "garbage":
        db.write_text("garbage\n")
    elif kind == "empty":
        db.touch()
    elif kind == "directory":
        db.mkdir()
    elif kind == "foreign":
        with sqlite3.connect(db) as conn:
            conn.execute(f"CREATE TABLE {table} (x)")
    elif kind == "damaged":
        conn = sqlite3.connect(db)
        conn.execute(f"CREATE TABLE {table} (x)")
        rows = [(b"\x01" * 2000,)] * 40
        conn.executemany(f"INSERT INTO {table} VALUES (?)", rows)  # noqa: S608  # test-made name
        conn.commit()
        conn.close()
        with db.open("r+b") as f:  # pages 2-4 of 4 KiB: not a valid b-tree page
            f.seek(4096)
            f.write(b"\xa5" * 3 * 4096)
    elif kind == "unwritable":
        return UNWRITABLE_DIR, UNWRITABLE_DIR / db_name
    elif kind == "file":
        a_file = tmp_path / "a-file"
        a_file.write_text("x")
        return a_file, a_file
    elif kind == "uncreatable":
        return UNCREATABLE_DIR, UNCREATABLE_DIR
    elif kind == "absent":
        return tmp_path / "absent", tmp_path / "absent"
    else:
        raise ValueError(kind)
    return tmp_path, db


def one_error_line(stderr: str, prefix: str) -> str:
    """The only line of `stderr`, which must start with `prefix`."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    return lines[0]


def column_read_by_another_process(path: Path, query: str) -> list[str]:
    """The first column of `query`'s rows, as a fresh process reads the store at `path`: with
    its own index and connection, not this process's (which SQLite shares between connections
    to one file, stale or not, after files were removed under them)."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        "print(*[row[0] for row in c.execute(sys.argv[2])])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), query], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()
