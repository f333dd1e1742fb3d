"""Opening a service's SQLite file in its data dir, the one way all three services do it (WAL,
synchronous=FULL, autocommit with explicit transactions, shared across threads under the store's
own lock).

Whatever goes wrong while opening (a missing or non-directory data dir, a directory or garbage
where the database should be, a directory SQLite cannot write to) is raised as the caller's own
store error with a one-line message naming the path, so each CLI reports it as a usage mistake
(exit 2) instead of a traceback."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from svc_common.errors import ErrorKind, ServiceError

ErrorFactory = Callable[[str], Exception]

BUSY_TIMEOUT_S = 30.0
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024


class StoreBusy(ServiceError):
    """Another process held the store's write lock past the busy timeout: the write did not
    happen, and the caller may retry (UNAVAILABLE), as opposed to a bug (INTERNAL)."""

    def __init__(self) -> None:
        super().__init__(
            ErrorKind.UNAVAILABLE,
            "STORE_BUSY",
            f"the store stayed locked by another process for {BUSY_TIMEOUT_S:g} s; retry",
        )


def _busy(exc: sqlite3.OperationalError) -> bool:
    # Extended result codes keep the primary one in the low byte.
    code: int = getattr(exc, "sqlite_errorcode", 0)
    return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@contextmanager
def write_transaction(
    conn: sqlite3.Connection, lock: threading.Lock
) -> Iterator[sqlite3.Connection]:
    """One write transaction on a connection from `open_db` (BEGIN IMMEDIATE ... COMMIT,
    synced before it returns), serialised in-process by `lock`. StoreBusy when another
    process keeps the write lock past the busy timeout."""
    with lock:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise StoreBusy() from None
            raise
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            conn.execute("ROLLBACK")
            raise StoreBusy() from None


def close_when_free(conn: sqlite3.Connection, lock: threading.Lock, wait_s: float) -> None:
    """Closes `conn` once no write holds `lock`; if one still does after `wait_s` (waiting on
    another process's lock), leaves it to the process exit rather than hang the stop."""
    if not lock.acquire(timeout=wait_s):
        return
    try:
        conn.close()
    finally:
        lock.release()


def require_data_dir(directory: Path, error: ErrorFactory, *, create: bool = False) -> None:
    """Checks that `directory` is a directory, making it (and its parents) when `create`."""
    if directory.is_dir():
        return
    if directory.exists():
        raise error(f"data dir {directory} is not a directory")
    if not create:
        raise error(f"data dir {directory} does not exist")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"data dir {directory} cannot be created: {_os_reason(exc)}") from None


def open_db(path: Path, error: ErrorFactory, *, schema: str = "") -> sqlite3.Connection:
    """Connects to `path` (created if absent), sets the pragmas and runs `schema` if given."""
    if path.exists() and not path.is_file():
        raise error(f"store {path} is not a regular file")
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        # A garbage file passes connect(); the first statement is what reads the header.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # A salt rotation writes tens of MB through the WAL; without a limit the file keeps
        # that size after every checkpoint.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        if schema:
            conn.executescript(schema)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise error(f"store {path} cannot be opened: {exc}") from None
    return conn


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
