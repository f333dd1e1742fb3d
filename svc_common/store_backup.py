"""Backing up a service's SQLite store while the service runs, and restoring one into a new data
dir: the one implementation behind every service's `backup` and `restore` commands.

A copy of the store file taken with `cp` while a service writes can be torn, and misses what is
still in the WAL file beside it. SQLite's online backup copies one consistent snapshot (a read
transaction: writers carry on) into a single self-contained file. The copy is checked
(`quick_check`, then the service's own `validate`), synced, and only then given its name, so a
file at the target name is always a whole backup. Backups hold the store's secrets (keys, salts,
API key hashes): they are created readable by their owner only, as new stores are."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from svc_common.scratch_files import scratch_file
from svc_common.sqlite_db import (
    LOST_COPY,
    SHORT_READ,
    ErrorFactory,
    quick_check,
    refuse_empty,
    require_data_dir,
    schema_version,
    short_read_message,
)

# Checks a copy is the service's store (its tables, its schema version); raises to refuse it.
Validate = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Copied:
    """What a backup or restore wrote."""

    path: Path
    bytes: int

    def as_json(self, verb: str) -> dict[str, object]:
        return {verb: str(self.path), "bytes": self.bytes}


def backup(store: Path, target: Path, error: ErrorFactory, validate: Validate) -> Copied:
    """Copies the store file `store` to `target`, which must not exist yet."""
    if not store.is_file():
        raise error(f"no store at {store}")
    refuse_empty(store, error)
    if target.exists():
        raise error(f"{target} already exists; back up to a new file")
    if not target.parent.is_dir():
        raise error(f"directory {target.parent} does not exist")
    return _copy(store, target, error, validate)


def restore(
    source: Path, data_dir: Path, file_name: str, error: ErrorFactory, validate: Validate
) -> Copied:
    """Copies the backup `source` into `data_dir` as its store, only into a data dir that holds
    no store: restoring under a running service would lose whatever it acknowledged since."""
    if not source.is_file():
        raise error(f"no backup at {source}")
    created = [d for d in (data_dir, *data_dir.parents) if not d.exists()]  # the leaf first
    try:
        require_data_dir(data_dir, error, create=True)
        # A store, or its WAL or index file; a copy a lost store left aside (sqlite_db's
        # NAME.lost-*) is no store of this dir's.
        held = [p for p in data_dir.glob(file_name + "*") if LOST_COPY not in p.name]
        if held:
            raise error(
                f"{data_dir} already holds a store ({held[0].name}); restore into a new data dir"
            )
        return _copy(source, data_dir / file_name, error, validate)
    except BaseException:
        for directory in created:  # leave nothing behind for a refused backup
            with suppress(OSError):
                directory.rmdir()
        raise


def requires_tables(error: ErrorFactory, service: str, *tables: str, version: int) -> Validate:
    """A Validate refusing a copy that lacks any of `tables`, the service's own, or that a newer
    release made (its schema `version` above this release's, as `sqlite_db.open_db` refuses)."""

    def validate(conn: sqlite3.Connection) -> None:
        found = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
        missing = [t for t in tables if t not in found]
        if missing:
            raise error(f"not a store of the {service} (it has no {missing[0]} table)")
        held = schema_version(conn)
        if held > version:
            raise error(
                f"a store of schema version {held}, newer than this release's {version}: "
                "use the release that made it"
            )

    return validate


# -- the `backup` and `restore` commands, as every service's CLI has them ----------------------


def add_commands(sub: argparse._SubParsersAction, service: str, data_dir_help: str) -> None:  # type: ignore[type-arg]  # argparse's private action type is generic only in typeshed
    p = sub.add_parser(
        "backup",
        help=f"copy the {service} store to a new file; safe while the {service} serves",
        description=f"Copies one consistent snapshot of the {service} store to a new file, "
        f"readable by its owner only. Safe while the {service} serves.",
    )
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--to", required=True, help="the backup file to create; must not exist")
    p = sub.add_parser(
        "restore",
        help="copy a backup into a new data dir",
        description="Checks a file made by `backup` and makes it the store of --data-dir, "
        "which must hold no store yet; then serve with that --data-dir.",
    )
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--from", dest="source", required=True, help="a file made by `backup`")


class _Stopped(Exception):
    pass


@contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT raise _Stopped in the with-block (once: a second Ctrl-C must
    not cut the cleanup of the first short). Signals the caller ignores (nohup, a background
    job) stay ignored; off the main thread, where Python takes no handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopped: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not stopped:
            stopped.append(signal.Signals(signum).name)
            raise _Stopped(stopped[0])

    previous = {}
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        if signal.getsignal(s) is not signal.SIG_IGN:
            previous[s] = signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_command(
    args: argparse.Namespace,
    data_dir: Path,
    file_name: str,
    error: ErrorFactory,
    validate: Validate,
) -> int:
    """Runs `backup` or `restore` (args.command) and prints its JSON line; 0. A SIGTERM, SIGHUP
    or SIGINT (a cron job's timeout, a closed terminal, Ctrl-C) stops it as an error, after the
    partial copy is removed, unless the copy already had its name: then it is whole, and
    reported as done."""
    backing_up = args.command == "backup"
    target = Path(args.to) if backing_up else data_dir / file_name
    existed = target.exists()
    try:
        with _stoppable():
            if backing_up:
                done = backup(data_dir / file_name, target, error, validate)
            else:
                done = restore(Path(args.source), data_dir, file_name, error, validate)
    except _Stopped as stopped:
        if existed or not target.exists():
            raise error(f"stopped by {stopped} before it finished") from None
        done = Copied(target, target.stat().st_size)  # linked only once checked and synced
    print(json.dumps(done.as_json("backup" if backing_up else "restored")))
    return 0


# SQLite's (extended) codes for a write the disk refused: a full disk, a file-size limit.
_WRITE_FAILURES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR_WRITE,
        sqlite3.SQLITE_IOERR_FSYNC,
        sqlite3.SQLITE_IOERR_TRUNCATE,
    }
)


def _copy(source: Path, target: Path, error: ErrorFactory, validate: Validate) -> Copied:
    try:
        # Read-only: a backup being restored is not turned into a WAL store beside itself.
        src = sqlite3.connect(f"file:{quote(str(source))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise error(f"{source} cannot be opened: {exc}") from None
    try:
        with scratch_file(target, "partial") as partial:
            dst = sqlite3.connect(partial, isolation_level=None)
            try:
                src.backup(dst)  # also where a source that is not SQLite fails
                # One file, no WAL beside it; the service puts WAL back on when it opens it.
                dst.execute("PRAGMA journal_mode=DELETE")
                verdict = quick_check(dst)
                if verdict != "ok":
                    raise error(f"the copy of {source} does not check out: {verdict}")
                validate(dst)
            finally:
                dst.close()
            _fsync(partial)
            try:
                os.link(partial, target)  # fails, rather than replace, if the name was taken
            except FileExistsError:
                raise error(f"{target} already exists; back up to a new file") from None
            _fsync(target.parent)
            return Copied(target, target.stat().st_size)
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == SHORT_READ:
            raise error(short_read_message(source, str(exc))) from None
        if getattr(exc, "sqlite_errorcode", None) in _WRITE_FAILURES:
            # Only the copy is written: the source is opened read-only.
            raise error(f"{target} cannot be written: {exc}") from None
        raise error(f"{source} cannot be copied: {exc}") from None
    except OSError as exc:
        raise error(f"{target} cannot be written: {exc.strerror or exc}") from None
    finally:
        src.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
