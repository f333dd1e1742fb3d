"""Opening a service's SQLite file in its data dir, the one way all three services do it (WAL,
synchronous=FULL, autocommit with explicit transactions, shared across threads under the store's
own lock).

Whatever goes wrong while opening (a missing or non-directory data dir, a directory or garbage
where the database should be, an empty file there, a directory SQLite cannot write to, damaged
pages) is raised as the caller's own store error with a one-line message naming the path, so
each CLI reports it as a usage mistake (exit 2) instead of a traceback."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import structlog

from svc_common.errors import ErrorKind, ServiceError
from svc_common.scratch_files import scratch_file

_log = structlog.get_logger("store")

ErrorFactory = Callable[[str], Exception]

BUSY_TIMEOUT_S = 30.0
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
STORE_REPLACED = "the store file was removed or replaced; restart the service"
# In the name of a copy a lost store's view was saved into, beside the store (StoreWatch).
LOST_COPY = ".lost-"


class StoreUnavailable(ServiceError):
    """The store refused a write for a reason of its own, not the caller's: the write was not
    completed and nothing was acknowledged, and the caller may retry (UNAVAILABLE), as opposed
    to a bug (INTERNAL). A caller that would answer such a failure with another write into the
    same store (a postponement, a note) should not: it fails the same way."""


class StoreBusy(StoreUnavailable):
    """Another process held the store's write lock past the busy timeout."""

    def __init__(self) -> None:
        super().__init__(
            ErrorKind.UNAVAILABLE,
            "STORE_BUSY",
            f"the store stayed locked by another process for {BUSY_TIMEOUT_S:g} s; retry",
        )


class StoreWriteFailed(StoreUnavailable):
    """The disk refused the write: full, read-only, gone, or an I/O error. SQLite rolled the
    transaction back. `cause` is SQLite's own short text ("database or disk is full"): it names
    the failure, never the data."""

    REASON = "STORE_WRITE_FAILED"

    def __init__(self, cause: str, *, read_only: bool = False) -> None:
        # Retrying a read-only store fails the same way until someone fixes its permissions.
        then = "check that the store and its directory are writable" if read_only else "retry"
        super().__init__(
            ErrorKind.UNAVAILABLE,
            self.REASON,
            f"the store could not be written ({cause}); the write did not complete; {then}",
        )
        self.cause = cause


class StoreLost(StoreUnavailable):
    """The store file is no longer the one opened (StoreWatch): what the path now names is not
    what this process reads or writes."""

    def __init__(self) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, StoreWriteFailed.REASON, STORE_REPLACED)


# The disk or file system refused the write, not the statement: full, I/O error, read-only,
# the file gone. Anything else (a constraint, a schema mismatch) is the caller's to handle.
_WRITE_FAILURES = frozenset(
    (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)
)


def _primary_code(exc: sqlite3.Error) -> int:
    # Extended result codes keep the primary one in the low byte.
    code: int = getattr(exc, "sqlite_errorcode", 0) or 0
    return code & 0xFF


def _busy(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _store_error(exc: BaseException) -> StoreUnavailable | None:
    """The service error a failed statement stands for, or None when it is not the store's."""
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    if _busy(exc):
        return StoreBusy()
    if _primary_code(exc) in _WRITE_FAILURES:
        # Loud: unlike a busy lock, this does not go away by itself.
        _log.warning("store_write_failed", cause=str(exc))
        return StoreWriteFailed(str(exc), read_only=_primary_code(exc) == sqlite3.SQLITE_READONLY)
    return None


def _rollback(conn: sqlite3.Connection) -> None:
    """Ends the transaction if SQLite has not already: after a full disk or an I/O error it
    rolls back by itself, and a second ROLLBACK would raise over the error that matters. A
    ROLLBACK that fails too leaves the transaction for the next BEGIN to clear."""
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@dataclass(frozen=True)
class StoreFile:
    """The file a store's path named when the store opened it, with its WAL and shared-memory
    index files. SQLite keeps using the files it opened: if the path is deleted, or another
    file moved over it, while a service runs, its writes succeed into a file no restart will
    open, and whatever they acknowledged is lost. The same goes for the WAL file (removed as
    "temporary files", the writes go on into the unlinked file, and a restart after a crash
    finds none of them) and for the index (another process opening the store then builds an
    index of its own, and two writers with two indexes overwrite each other's frames). While
    any connection is open SQLite keeps both in place, so another inode is never its doing.

    Not seen: a file copied over the store in place (`cp`), which keeps its inode."""

    path: Path
    device: int
    inode: int
    # (device, inode) of the WAL and index files when the store was opened (None: absent then).
    wal: tuple[int, int] | None = None
    shm: tuple[int, int] | None = None
    # Where SQLite keeps those two: beside the file the path resolves to (a symlinked store's
    # are beside its target, not the link).
    real: Path | None = None

    @classmethod
    def of(cls, path: Path) -> StoreFile:
        st = os.stat(path)
        real = path.resolve()
        return cls(
            path,
            st.st_dev,
            st.st_ino,
            _identity(_wal_path(real)),
            _identity(_shm_path(real)),
            real,
        )

    # Built once, not at each look (every write, and once a second): pathlib interns the new
    # "-wal"/"-shm" name of each, which dies at once; the interned-string table then filled
    # with dead slots and was rebuilt every few thousand writes, a ~1 MB allocation that glibc
    # kept in a thread's arena each time (the server-mode publisher's resident memory crept up
    # in ~1 MB steps, up to about 1 MB per arena; soak review).
    @functools.cached_property
    def wal_path(self) -> Path:
        return _wal_path(self.real or self.path)

    @functools.cached_property
    def shm_path(self) -> Path:
        return _shm_path(self.real or self.path)

    def replaced(self) -> bool:
        """True when the path no longer names the file opened (deleted, moved, replaced), or
        its WAL or index file's path no longer names the one it had."""
        return (
            _identity(self.path) != (self.device, self.inode)
            # The path resolving elsewhere (a symlink replaced by its file, or the reverse):
            # the next opener would use the WAL and index files beside another name.
            or (self.real is not None and _resolved(self.path) != self.real)
            or (self.wal is not None and _identity(self.wal_path) != self.wal)
            or (self.shm is not None and _identity(self.shm_path) != self.shm)
        )


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    """The store file's identity, size and modification time: it moves when anyone writes
    into it (a checkpoint)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identity(path: Path) -> tuple[int, int] | None:
    signature = _signature(path)
    return None if signature is None else signature[:2]


def _shm_path(path: Path) -> Path:
    return path.with_name(path.name + "-shm")


def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


class StoreWatch:
    """Whether a running service's store file is still the one it opened (`StoreFile`), looked
    at by every write and, at most once per `interval_s`, by a reader that polls (`poll`).

    The first time it is not: what the connection sees, every write it acknowledged, is saved
    (`_keep_what_was_acknowledged`: into the store file, or into a copy beside it); then one
    `store_file_replaced` error line, and `on_lost` (the service reports NOT_SERVING: other
    processes' writes, an admin's disable, now go where it no longer reads). It stays lost:
    writes are refused, and the connection is never closed (`close_when_free`), until a
    restart opens the path."""

    def __init__(
        self,
        file: StoreFile,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        interval_s: float = 1.0,
    ) -> None:
        self.file = file
        self._monotonic = monotonic
        self._interval_s = interval_s
        self._next_poll = monotonic() + interval_s
        self._lost = False
        self._on_lost: list[Callable[[], None]] = []
        # The store file as last seen while the store was whole (every look, every commit of
        # this process's own): changed at the loss, someone else wrote into it since.
        self._seen = _signature(file.path)

    @property
    def lost(self) -> bool:
        """Whether the store was found lost (no lock, no `stat`: cheap for a health check)."""
        return self._lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Runs `callback` once the store is found lost (at once if it already is)."""
        self._on_lost.append(callback)
        if self._lost:
            callback()

    def check(self, conn: sqlite3.Connection) -> bool:
        """True when the store is lost; the caller holds `conn`'s lock."""
        if self._lost:
            return True
        # First, as it raises ProgrammingError for a connection already closed (a read that
        # outlived the service's stop): closing the last connection removes the WAL file,
        # which would pass for a WAL file removed under a running service.
        _ = conn.in_transaction
        if not self.file.replaced():
            self._seen = _signature(self.file.path)
            return False
        self._lost = True
        self._keep_what_was_acknowledged(conn)
        _log.error("store_file_replaced", path=str(self.file.path))
        for callback in self._on_lost:
            callback()
        return True

    def committed(self) -> None:
        """After a commit of this process's own, which may have checkpointed into the file;
        only if the store is still whole, as another process may have written into the file
        between the write's look and its commit (its checkpoint would pass for this one's)."""
        if not self._lost and not self.file.replaced():
            self._seen = _signature(self.file.path)

    def poll(self, conn: sqlite3.Connection, lock: threading.Lock | None) -> bool:
        """`check`, at most once per interval (a few `stat`s), under `lock` (None: the caller
        holds `conn`'s); True when lost."""
        if self._lost:
            return True
        now = self._monotonic()
        if now < self._next_poll:
            return False
        self._next_poll = now + self._interval_s
        if lock is None:
            return self.check(conn)
        with lock:
            return self.check(conn)

    def _keep_what_was_acknowledged(self, conn: sqlite3.Connection) -> None:
        """Saves what this connection sees, which holds every write it acknowledged: into the
        store file at the path when that is still the one opened and no other process can
        have written since; else into a copy beside it (`store_saved_aside`), so that nothing
        acknowledged is gone for good, whichever files went."""
        file = self.file
        path, wal, shm = file.path, file.wal_path, file.shm_path
        # The path now resolving to another name (a symlink flattened): the next opener uses
        # the WAL and index files beside that name, never this connection's.
        renamed = file.real is not None and _resolved(path) != file.real
        ours = not renamed and _identity(path) == (file.device, file.inode)
        wal_now, shm_now = _identity(wal), _identity(shm)
        # Another process that opened the store since made files of its own: an index (if the
        # old one went), perhaps a WAL file it wrote (one that only tried to read, and failed
        # on the frames the index names, leaves an empty one). With the index gone and none
        # new, only an unchanged store file says nobody wrote: an opener that closed as if it
        # were the last checkpointed into it and removed its files.
        foreign_shm = shm_now is not None and shm_now != file.shm
        foreign_wal = wal_now is not None and wal_now != file.wal and _size(wal) > 0
        unchanged = self._seen is not None and _signature(path) == self._seen
        index_ours = shm_now == file.shm or (shm_now is None and unchanged)
        if ours and index_ours and not foreign_wal:
            if wal_now != file.wal:
                # The WAL file went: its frames are only in this connection's open file. TRUNCATE
                # also resets the index, so that the others can read and write again.
                self._checkpoint(conn)
            # Else the WAL file at the path is still this one, its frames where the next
            # opener's recovery finds them, perhaps after another process's (a writer that
            # built an index of its own, since removed too): a checkpoint from this stale
            # index would truncate those away.
            return
        self._save_aside(conn)
        if (
            not renamed
            and not ours
            and wal_now is not None
            and wal_now == file.wal
            and not foreign_shm
        ):
            # The store file was replaced, but the WAL file at the path is still this one:
            # emptied, or the file moved in would be read with this store's frames over it.
            self._checkpoint(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            _log.error("store_wal_not_saved", cause=str(exc))
            return
        if busy is not None and busy[0]:
            _log.error("store_wal_not_saved", cause="checkpoint blocked by a reader")

    def _save_aside(self, conn: sqlite3.Connection) -> None:
        path = self.file.path
        aside = path.with_name(f"{path.name}{LOST_COPY}{os.getpid()}-{time.time_ns() // 1_000_000}")
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            copy = sqlite3.connect(aside)
            try:
                conn.backup(copy)
                verdict = quick_check(copy)
            finally:
                copy.close()
        except (OSError, sqlite3.Error) as exc:
            # Perhaps another process's frames past the end of this connection's WAL file (a
            # writer that skips the quick check every store open makes): nothing half-copied
            # is left to pass for a copy.
            with suppress(OSError):
                aside.unlink()
            _log.error("store_not_saved_aside", cause=str(exc))
            return
        # Merge what it holds by hand: the path now names another store (or none).
        _log.error("store_saved_aside", copy=str(aside), quick_check=verdict)


@contextmanager
def write_transaction(
    conn: sqlite3.Connection, lock: threading.Lock, watch: StoreWatch | None = None
) -> Iterator[sqlite3.Connection]:
    """One write transaction on a connection from `open_db` (BEGIN IMMEDIATE ... COMMIT,
    synced before it returns), serialised in-process by `lock`. StoreBusy when another
    process keeps the write lock past the busy timeout; StoreWriteFailed when the disk refuses
    the write, or when `watch` finds the connection's file no longer at its path, so that
    nothing is acknowledged into a file a restart would not open. Either way nothing is kept."""
    with lock:
        # First, as it raises ProgrammingError for a connection already closed (a write that
        # outlived the service's stop): closing the last connection removes the WAL file, and
        # the check below would take that for a store removed under a running service.
        _rollback(conn)  # one a failed ROLLBACK left behind would make BEGIN fail for good
        if watch is not None and watch.check(conn):
            # A few `stat`s per write; a file replaced between them and COMMIT is caught at
            # the next look, with `committed` taking no foreign write for this one's.
            raise StoreWriteFailed(STORE_REPLACED)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise (_store_error(exc) or exc) from None
        try:
            yield conn
        except BaseException as exc:
            _rollback(conn)
            mapped = _store_error(exc)
            if mapped is not None:
                raise mapped from None
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # a deferred constraint fails here too, not only the disk
            _rollback(conn)
            raise (_store_error(exc) or exc) from None
        if watch is not None:
            watch.committed()


def close_when_free(
    conn: sqlite3.Connection, lock: threading.Lock, wait_s: float, watch: StoreWatch | None = None
) -> None:
    """Closes `conn` once no write holds `lock`; if one still does after `wait_s` (waiting on
    another process's lock), leaves it to the process exit rather than hang the stop.

    A store `watch` finds lost (now, or before) is not closed: SQLite's close would checkpoint
    the WAL file this connection still has open into the file at the path and then remove the
    WAL file by its name, another process's by now. The connection is kept from the garbage
    collector, and `abandoned_stores` tells the process to end without the interpreter's
    clean-up, which would close it all the same."""
    if not lock.acquire(timeout=wait_s):
        return
    try:
        if watch is not None and watch.check(conn):
            _abandoned.append(conn)
            return
        conn.close()
    except sqlite3.ProgrammingError:
        pass  # closed already
    finally:
        lock.release()


_abandoned: list[sqlite3.Connection] = []


def abandoned_stores() -> bool:
    """Whether this process left a lost store's connection open (`close_when_free`): it must
    then end with os._exit, as interpreter exit would close the connection."""
    return bool(_abandoned)


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


def refuse_empty(path: Path, error: ErrorFactory) -> None:
    """Raises if the store file `path` is empty. SQLite takes an empty file for an empty
    database and would make it a new store, with nothing in it. A store file is never empty
    (`_create_store_file`), so this is a copy cut short (a failed `cp`, a full disk): refused,
    and left as found for whoever looks into it, rather than written over."""
    if path.stat().st_size == 0:
        raise error(
            f"store {path} is an empty file (0 bytes), not a store: remove it, then restore "
            "a backup or start a new, empty store"
        )


def open_db(
    path: Path,
    error: ErrorFactory,
    *,
    schema: str = "",
    check: bool = True,
    version: int = 0,
    own_table: tuple[str, str] | None = None,
) -> sqlite3.Connection:
    """Connects to `path` (created if absent, refused if an empty file), sets the pragmas and
    runs `schema` if given.
    `check`: run SQLite's quick_check (every page read once); a process opening the same file
    again (a second connection) need not.
    `version`: the newest schema version (SQLite's user_version) this release reads; a store
    stamped with a newer one (`stamp_version`), a newer release's after a downgrade, is refused
    before anything touches it: its tables may need what this release never writes, and every
    call would fail as INTERNAL while health said SERVING.
    `own_table`: (service, a table every store of that service has); a store holding tables
    but not that one, another service's store put in its place, is refused before `schema`
    adds the service's tables to it."""
    if path.exists() and not path.is_file():
        raise error(f"store {path} is not a regular file")
    if not path.exists():
        try:
            _create_store_file(path)
        except OSError as exc:  # a data dir we may not write to, a full disk
            raise error(f"store {path} cannot be created: {_os_reason(exc)}") from None
        except sqlite3.Error as exc:
            raise error(f"store {path} cannot be created: {exc}") from None
    else:
        refuse_empty(path, error)
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        # A garbage file passes connect(); the first statement is what reads the header.
        if own_table is not None:
            # Before anything writes: WAL mode rewrites the header of a store in another mode
            # (an operator backup), which must be left as it was copied.
            _refuse_foreign(conn, path, error, *own_table)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # A salt rotation writes tens of MB through the WAL; without a limit the file keeps
        # that size after every checkpoint.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        # Damaged pages past the header open fine and fail only the calls that read them, as
        # INTERNAL, while health says SERVING. A quick check reads every page (0.4 s for a
        # 600 MB store, warm) and refuses the store at start instead.
        verdict = quick_check(conn) if check else "ok"
        if verdict != "ok":
            conn.close()
            if f"error code={SHORT_READ}" in verdict:
                raise error(short_read_message(path, verdict))
            raise error(f"store {path} is damaged ({verdict}); restore it from a backup")
        held = schema_version(conn)
        if version and held > version:
            conn.close()
            raise error(
                f"store {path} has schema version {held}, newer than this release's "
                f"{version}: run the release that made it, or restore a backup of this one"
            )
        if schema:
            conn.executescript(schema)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        if getattr(exc, "sqlite_errorcode", 0) == SHORT_READ:
            raise error(short_read_message(path, str(exc))) from None
        raise error(f"store {path} cannot be opened: {exc}") from None
    return conn


def _refuse_foreign(
    conn: sqlite3.Connection, path: Path, error: ErrorFactory, service: str, table: str
) -> None:
    found = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if found and table not in found:
        conn.close()
        raise error(
            f"store {path} is not a store of the {service} (it has tables, and no {table} "
            "table): another service's store, or a wrong backup, copied into place"
        )


SHORT_READ = 522  # SQLITE_IOERR_SHORT_READ, an extended result code


def short_read_message(path: Path, cause: str) -> str:
    """What a short read means for a store: the WAL index names frames its WAL file lacks, as
    when the file was removed while a service had the store open. That service saves them into
    the store when it next looks (StoreWatch: the operator and the SSP within a second, the
    publisher at its next call or refresher pass) or as it stops; a restore would throw them
    away."""
    return (
        f"store {path} cannot be read in full ({cause}); if its -wal file was removed while a "
        "service ran, that service saves what it held at its next call or as it stops: try "
        "again, or restart the service; else restore it from a backup"
    )


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def stamp_version(conn: sqlite3.Connection, version: int) -> None:
    """Records the store's schema version (see open_db), inside the caller's write transaction
    that brought it there."""
    conn.execute(f"PRAGMA user_version = {int(version)}")


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def quick_check(conn: sqlite3.Connection) -> str:
    """SQLite's quick_check verdict on one line: "ok", or the first problem found."""
    return " ".join(str(conn.execute("PRAGMA quick_check(1)").fetchone()[0]).split())


def _create_store_file(path: Path) -> None:
    """Makes `path` an empty database (its first page written, so not an empty file), private
    to its owner. Made under another name and linked into place: a service starting beside
    this one never finds the path empty, which `open_db` refuses. When another process links
    its own first, the link fails and both use that one."""
    target = path.resolve()  # a dangling symlink's target: the store goes there
    with scratch_file(target, "new") as partial:
        conn = sqlite3.connect(partial, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # writes the header
        finally:
            conn.close()
        # Synced before it has its name: after a crash the name is absent, never empty.
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(partial, target)
        except FileExistsError:
            pass
        except OSError:
            # A filesystem without hard links: the same bytes into a file only this process
            # creates. Empty for the moment between its creation and the write (a service
            # starting then is refused, and can be started again).
            _copy_exclusive(partial, target)


def _copy_exclusive(source: Path, target: Path) -> None:
    data = source.read_bytes()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: both use that one
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        target.unlink(missing_ok=True)  # never leave the empty file open_db refuses
        raise


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
