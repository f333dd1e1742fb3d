"""SQLite store (WAL, synchronous=FULL): whatever a call acknowledged survives kill -9.

Two connections, each shared under its own lock: one for writes, one for reads. Every
statement is short, so a lock costs less than a connection per thread; but a write can wait
up to the busy timeout for another process's write lock (a second publisher on the data dir, a
slow fsync), and reads must not queue behind it: WAL lets them read the last commit meanwhile,
so an impression for a user with a current token is never held up by a write."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from publisher_svc.model import Identity
from svc_common import store_backup
from svc_common.sqlite_db import (
    StoreFile,
    StoreUnavailable,
    StoreWatch,
    close_when_free,
    open_db,
    require_data_dir,
    schema_version,
    stamp_version,
    write_transaction,
)

# The store's schema as this release leaves it (SQLite's user_version); a newer one is refused.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    user_id TEXT PRIMARY KEY,
    dii_key TEXT NOT NULL,
    advertising_token TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    identity_expires INTEGER NOT NULL,
    refresh_from INTEGER NOT NULL,
    refresh_expires INTEGER NOT NULL,
    refresh_response_key TEXT NOT NULL,
    -- when the background refresher should next try: refresh_from, or later after a failure
    next_attempt_at INTEGER NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    -- 1 once the user has used the identity (logged in, asked for the token, was shown an ad)
    -- since it was last refreshed in the background; see _USED_COLUMN
    used_since_refresh INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identities_refresh_from ON identities (refresh_from);
CREATE INDEX IF NOT EXISTS identities_next_attempt ON identities (next_attempt_at);
CREATE TABLE IF NOT EXISTS operator_optouts (
    dii_key TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS site_optouts (
    user_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
-- why a user's identity ended when a refresh ended it (OPTOUT or LOGIN_REQUIRED), kept until
-- the user logs in again, logs out or opts out of the site
CREATE TABLE IF NOT EXISTS ended_identities (
    user_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
"""

_COLS = (
    "user_id, dii_key, advertising_token, refresh_token, identity_expires, refresh_from, "
    "refresh_expires, refresh_response_key, failed_attempts, next_attempt_at, used_since_refresh"
)
# Stores made before the column existed get it on open; their identities count as used, so
# each is refreshed once more as before and rests only if nobody uses it after that.
_USED_COLUMN = "used_since_refresh INTEGER NOT NULL DEFAULT 1"
# An opt-out ends every identity of its DII, whichever user holds it (_end_identities_of).
_DII_INDEX = "identities_dii"


class StoreError(Exception):
    """The store cannot be opened; the message is one line for stderr."""


# What a backup of this store must hold (`uid2-publisher backup / restore`).
# Only what every released version had: the publisher adds the rest when it opens the store.
STORE_TABLES = store_backup.requires_tables(
    StoreError,
    "publisher",
    "identities",
    "operator_optouts",
    "site_optouts",
    version=SCHEMA_VERSION,
)


@dataclass(frozen=True)
class StoredIdentity:
    user_id: str
    dii_key: str = field(repr=False)  # a DII hash: never in a log line
    identity: Identity
    failed_attempts: int = 0
    # When a refresh is next due: refresh_from, or later while backing off after failures,
    # or refresh_expires while the identity rests (unused since its last background refresh).
    next_attempt_at: int = 0
    used_since_refresh: bool = True


@dataclass(frozen=True)
class DueIdentity:
    user_id: str
    next_attempt_at: int


# A row of `SELECT {_COLS}`, as sqlite3 returns it for the TEXT and INTEGER NOT NULL columns.
_IdentityRow = tuple[str, str, str, str, int, int, int, str, int, int, int]


def _row(r: _IdentityRow) -> StoredIdentity:
    (user_id, dii_key, at, rt, ie, rf, rx, rrk, failed, next_at, used) = r
    return StoredIdentity(
        user_id=user_id,
        dii_key=dii_key,
        identity=Identity(
            advertising_token=at,
            refresh_token=rt,
            identity_expires=ie,
            refresh_from=rf,
            refresh_expires=rx,
            refresh_response_key=rrk,
        ),
        failed_attempts=failed,
        next_attempt_at=next_at,
        used_since_refresh=bool(used),
    )


class SqliteStore:
    FILE_NAME = "publisher.sqlite3"

    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir)
        require_data_dir(path, StoreError, create=True)
        self._lock = threading.Lock()
        self._db = open_db(
            path / self.FILE_NAME,
            StoreError,
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            own_table=("publisher", "identities"),
        )
        self._watch = StoreWatch(StoreFile.of(path / self.FILE_NAME))
        try:
            self._upgrade()
        except (sqlite3.Error, StoreUnavailable) as exc:
            self._db.close()
            reason = exc.message if isinstance(exc, StoreUnavailable) else str(exc)
            raise StoreError(f"store {path / self.FILE_NAME} cannot be opened: {reason}") from None
        self._read_lock = threading.Lock()
        try:
            self._reader = open_db(path / self.FILE_NAME, StoreError, check=False)
        except StoreError:
            self._db.close()
            raise
        self._reader.execute("PRAGMA query_only=1")

    def _upgrade(self) -> None:
        """Gives a store made by an older version what this one adds: the `used_since_refresh`
        column, and the index an opt-out finds every identity of its DII by. Checked again
        inside the write transaction, so two processes opening the same old store do not both
        add them (the second would fail on a duplicate column). Not in _SCHEMA: run there, on
        a store another process holds, it fails as a raw "database is locked"."""
        if self._upgraded():
            return
        with self._transaction() as db:
            if "used_since_refresh" not in self._columns():
                db.execute(f"ALTER TABLE identities ADD COLUMN {_USED_COLUMN}")
            db.execute(f"CREATE INDEX IF NOT EXISTS {_DII_INDEX} ON identities (dii_key)")
            if schema_version(db) < SCHEMA_VERSION:
                stamp_version(db, SCHEMA_VERSION)

    def _upgraded(self) -> bool:
        indexes = {str(row[1]) for row in self._db.execute("PRAGMA index_list(identities)")}
        return (
            "used_since_refresh" in self._columns()
            and _DII_INDEX in indexes
            and schema_version(self._db) >= SCHEMA_VERSION
        )

    def _columns(self) -> set[str]:
        return {str(row[1]) for row in self._db.execute("PRAGMA table_info(identities)")}

    def close(self, wait_s: float = 2.0) -> None:
        close_when_free(self._db, self._lock, wait_s, self._watch)
        close_when_free(self._reader, self._read_lock, wait_s, self._watch)

    def _read_one(self, sql: str, params: tuple[object, ...]) -> Any:
        """The first row (a tuple, as sqlite3 gives it) of a read on the read connection, or
        None."""
        with self._read_lock:
            self._watch.poll(self._reader, None)
            return self._reader.execute(sql, params).fetchone()

    def on_lost(self, callback: Callable[[], None]) -> None:
        """`callback` runs once, when a write or a read (once a second at most) first finds
        the store file replaced (sqlite_db.StoreWatch)."""
        self._watch.on_lost(callback)

    # -- identities ----------------------------------------------------------------------

    def get(self, user_id: str) -> StoredIdentity | None:
        r = self._read_one(
            f"SELECT {_COLS} FROM identities WHERE user_id = ?",  # noqa: S608 - constant
            (user_id,),
        )
        return _row(r) if r else None

    def put_unless_site_optout(
        self, user_id: str, dii_key: str, identity: Identity, now_ms: int
    ) -> bool:
        """Stores (or replaces) a user's identity, unless the user opted out of the site in the
        meantime. Returns whether it was stored."""
        with self._transaction() as db:
            opted = db.execute(
                "SELECT 1 FROM site_optouts WHERE user_id = ?", (user_id,)
            ).fetchone()
            if opted is None:
                db.execute("DELETE FROM ended_identities WHERE user_id = ?", (user_id,))
                db.execute(
                    "INSERT OR REPLACE INTO identities (user_id, dii_key, advertising_token,"
                    " refresh_token, identity_expires, refresh_from, refresh_expires,"
                    " refresh_response_key, next_attempt_at, failed_attempts, updated_at,"
                    " used_since_refresh) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 1)",
                    (
                        user_id,
                        dii_key,
                        identity.advertising_token,
                        identity.refresh_token,
                        identity.identity_expires,
                        identity.refresh_from,
                        identity.refresh_expires,
                        identity.refresh_response_key,
                        identity.refresh_from,
                        now_ms,
                    ),
                )
        return opted is None

    def replace_if_current(
        self,
        user_id: str,
        old_refresh_token: str,
        identity: Identity,
        now_ms: int,
        *,
        by_user: bool,
    ) -> bool:
        """Swaps in a refreshed identity, only if the stored one is still the one refreshed
        (a logout, a new login or another refresh in between wins). `by_user`: the refresh
        served the user (their token request or ad); else it was the background's, and the
        identity counts as unused until the user next comes."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE identities SET advertising_token = ?, refresh_token = ?,"
                " identity_expires = ?, refresh_from = ?, refresh_expires = ?,"
                " refresh_response_key = ?, next_attempt_at = ?, failed_attempts = 0,"
                " updated_at = ?, used_since_refresh = ? WHERE user_id = ? AND refresh_token = ?",
                (
                    identity.advertising_token,
                    identity.refresh_token,
                    identity.identity_expires,
                    identity.refresh_from,
                    identity.refresh_expires,
                    identity.refresh_response_key,
                    identity.refresh_from,
                    now_ms,
                    int(by_user),
                    user_id,
                    old_refresh_token,
                ),
            )
            return cur.rowcount == 1

    def mark_used(self, user_id: str) -> bool:
        """The user came back: their identity is refreshed in the background again, from its
        refresh_from on (a resting one was not due until refresh_expires). Returns whether it
        was unused until now."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE identities SET used_since_refresh = 1, next_attempt_at ="
                " CASE WHEN failed_attempts = 0 THEN refresh_from ELSE next_attempt_at END"
                " WHERE user_id = ? AND used_since_refresh = 0",
                (user_id,),
            )
            return cur.rowcount == 1

    def rest(self, user_id: str, old_refresh_token: str) -> bool:
        """Parks an identity nobody used since its last background refresh: not refreshed
        again unless the user comes back (`mark_used`); due once more at its refresh_expires,
        when the refresh rules end it (login required) without calling the operator."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE identities SET next_attempt_at = refresh_expires, failed_attempts = 0"
                " WHERE user_id = ? AND refresh_token = ? AND used_since_refresh = 0",
                (user_id, old_refresh_token),
            )
            return cur.rowcount == 1

    def end_if_current(self, user_id: str, old_refresh_token: str, now_ms: int) -> bool:
        """Deletes an identity whose refresh answered login required, if it is still the one
        refreshed, and remembers why (ended_status) in the same transaction."""
        with self._transaction() as db:
            deleted = (
                db.execute(
                    "DELETE FROM identities WHERE user_id = ? AND refresh_token = ?",
                    (user_id, old_refresh_token),
                ).rowcount
                == 1
            )
            if deleted:
                _mark_ended(db, user_id, "LOGIN_REQUIRED", now_ms)
        return deleted

    def end_as_opted_out(self, user_id: str, optouts: Mapping[str, int], now_ms: int) -> None:
        """The operator answered opt-out for the user (at a login, or earlier when the store
        refused the record): records each DII's opt-out (`optouts`: DII hash -> when answered),
        drops whatever identity the user had, and every other user's identity of those DIIs,
        and remembers why (ended_status) until each logs in again, in one transaction. No user
        (""): the opt-outs, and the identities of those DIIs."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO operator_optouts (dii_key, at) VALUES (?, ?)",
                optouts.items(),
            )
            _end_identities_of(db, list(optouts), now_ms)
            if user_id:
                db.execute("DELETE FROM identities WHERE user_id = ?", (user_id,))
                _mark_ended(db, user_id, "OPTOUT", now_ms)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, synced before it ends (`sqlite_db.write_transaction`)."""
        return write_transaction(self._db, self._lock, self._watch)

    def ended_status(self, user_id: str) -> str | None:
        """OPTOUT or LOGIN_REQUIRED when a refresh ended the user's identity and the user has
        not logged in, logged out or opted out of the site since; None otherwise."""
        r = self._read_one("SELECT status FROM ended_identities WHERE user_id = ?", (user_id,))
        return str(r[0]) if r else None

    def delete(self, user_id: str) -> bool:
        """Deletes the user's identity, and the record of how an earlier one ended."""
        with self._transaction() as db:
            cur = db.execute("DELETE FROM identities WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM ended_identities WHERE user_id = ?", (user_id,))
        return cur.rowcount == 1

    def postpone(
        self, user_id: str, old_refresh_token: str, next_attempt_at: int, failed_attempts: int
    ) -> None:
        """Records a failed background refresh: try again at `next_attempt_at`."""
        with self._transaction() as db:
            db.execute(
                "UPDATE identities SET next_attempt_at = ?, failed_attempts = ?"
                " WHERE user_id = ? AND refresh_token = ?",
                (next_attempt_at, failed_attempts, user_id, old_refresh_token),
            )

    def due(self, now_ms: int, limit: int) -> list[DueIdentity]:
        """Identities whose next refresh attempt is due, oldest first (uses the index). The
        background refresher asks every interval: an idle publisher finds a lost store so."""
        with self._read_lock:
            self._watch.poll(self._reader, None)
            rows = self._reader.execute(
                "SELECT user_id, next_attempt_at FROM identities WHERE next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (now_ms, limit),
            ).fetchall()
        return [DueIdentity(str(u), int(n)) for u, n in rows]

    def count(self) -> int:
        (n,) = self._read_one("SELECT COUNT(*) FROM identities", ())
        return int(n)

    # -- opt-outs ------------------------------------------------------------------------

    def record_operator_optout(self, dii_key: str, now_ms: int, user_id: str = "") -> None:
        """Records that the operator answered opt-out for a DII and drops every stored identity
        of that DII (the user's, and any other user's who logged in with it), remembering why
        (ended_status), in one durable transaction. `user_id`: who it was answered for, if
        anyone; their identity of that DII is among those dropped."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO operator_optouts (dii_key, at) VALUES (?, ?)",
                (dii_key, now_ms),
            )
            _end_identities_of(db, [dii_key], now_ms)

    def is_operator_optout(self, dii_key: str) -> bool:
        return (
            self._read_one("SELECT 1 FROM operator_optouts WHERE dii_key = ?", (dii_key,))
            is not None
        )

    def set_site_optout(self, user_id: str, opted_out: bool, now_ms: int) -> None:
        """Sets or clears the user's site opt-out; setting it also deletes the identity."""
        with self._transaction() as db:
            if opted_out:
                db.execute(
                    "INSERT OR IGNORE INTO site_optouts (user_id, at) VALUES (?, ?)",
                    (user_id, now_ms),
                )
                db.execute("DELETE FROM identities WHERE user_id = ?", (user_id,))
                db.execute("DELETE FROM ended_identities WHERE user_id = ?", (user_id,))
            else:
                db.execute("DELETE FROM site_optouts WHERE user_id = ?", (user_id,))

    def is_site_optout(self, user_id: str) -> bool:
        return (
            self._read_one("SELECT 1 FROM site_optouts WHERE user_id = ?", (user_id,)) is not None
        )


def _mark_ended(db: sqlite3.Connection, user_id: str, status: str, now_ms: int) -> None:
    """Remembers how the user's identity ended (ended_status), inside the caller's transaction."""
    db.execute(
        "INSERT OR REPLACE INTO ended_identities (user_id, status, at) VALUES (?, ?, ?)",
        (user_id, status, now_ms),
    )


def _end_identities_of(db: sqlite3.Connection, dii_keys: list[str], now_ms: int) -> None:
    """Inside the caller's transaction: drops every identity of these DIIs (an opt-out is the
    DII's, not one user's), remembering for each user that it ended in an opt-out."""
    for dii_key in dii_keys:
        db.execute(
            "INSERT OR REPLACE INTO ended_identities (user_id, status, at) "
            "SELECT user_id, 'OPTOUT', ? FROM identities WHERE dii_key = ?",
            (now_ms, dii_key),
        )
        db.execute("DELETE FROM identities WHERE dii_key = ?", (dii_key,))
