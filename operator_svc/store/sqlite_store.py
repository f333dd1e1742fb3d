"""The SQLite implementation of the operator store.

Layout: `meta` (first-level salt, identity scope, schema version, one change counter per
table and when the salts were last rotated), `salt_blobs` (the SaltSet's flat buffers),
`keysets`, `keys`, `sites`, `clients`, `delegations`, `keypairs` (client-side token generation
subscriptions) and `optouts` (first-level hash -> first opt-out time; its rowid is the sequence
other processes follow incrementally).

One connection serialises this process's writes (a lock); each reader thread (the sync poller)
opens its own connection with `reader()`."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from operator_svc.store.records import (
    ClientRow,
    KeypairRow,
    KeyRow,
    KeysetRow,
    OptOutRow,
    SiteRow,
)
from svc_common.sqlite_db import (
    BUSY_TIMEOUT_S,
    StoreBusy,
    StoreFile,
    StoreWatch,
    close_when_free,
    open_db,
    require_data_dir,
    write_transaction,
)
from uid2_crypto.keys import MASTER_KEYSET_ID, REFRESH_KEYSET_ID
from uid2_crypto.salts import latest_rotation_ms

DB_FILE = "operator.sqlite3"
SCHEMA_VERSION = 1

# The longest advertising-token lifetime any `serve` has issued tokens with from this store.
# A serve restarted with a shorter --token-lifetime must not tell decryptors to refuse the
# longer-lived tokens already out there (INVALID_TOKEN_LIFETIME for every one of them).
LONGEST_LIFETIME_META = "longest_token_lifetime_s"
LONGEST_REFRESH_LIFETIME_META = "longest_refresh_lifetime_s"
# Change counters kept in `meta`, bumped in the same transaction as the change.
TABLES = ("salts", "keys", "sites", "clients", "delegations", "keypairs")
# When the salts were last rotated (epoch ms), written with the rotated salts.
SALTS_ROTATED_META = "salts_rotated_ms"

# Added after the first release: stores made before it get the table from the first
# `keypair add` (in that command's transaction), and read as having none until then.
_KEYPAIRS_TABLE = """CREATE TABLE IF NOT EXISTS keypairs (
    subscription_id TEXT PRIMARY KEY, site_id INTEGER NOT NULL, private_key BLOB NOT NULL,
    disabled INTEGER NOT NULL, created INTEGER NOT NULL);"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS salt_blobs (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keysets (
    keyset_id INTEGER PRIMARY KEY, site_id INTEGER NOT NULL, name TEXT NOT NULL,
    allowed_sites TEXT, enabled INTEGER NOT NULL, is_default INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id INTEGER PRIMARY KEY, keyset_id INTEGER NOT NULL, site_id INTEGER NOT NULL,
    created INTEGER NOT NULL, activates INTEGER NOT NULL, expires INTEGER NOT NULL,
    secret BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sites (
    site_id INTEGER PRIMARY KEY, name TEXT NOT NULL, domains TEXT NOT NULL,
    app_names TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    client_id INTEGER PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    site_id INTEGER NOT NULL, roles TEXT NOT NULL, key_salt BLOB NOT NULL,
    key_hash BLOB NOT NULL, secret TEXT NOT NULL, disabled INTEGER NOT NULL,
    created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS delegations (
    site_id INTEGER NOT NULL, client_name TEXT NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (site_id, client_name));
CREATE TABLE IF NOT EXISTS optouts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, flh BLOB NOT NULL UNIQUE,
    opted_out_at INTEGER NOT NULL);
"""
_SCHEMA += _KEYPAIRS_TABLE + "\n"


class StoreError(Exception):
    """The store cannot be used as asked (absent, unreadable, not initialised, conflicting
    row); the message is one line for stderr."""


def _meta_int(conn: sqlite3.Connection, key: str) -> int:
    """The meta table's integer `key`; 0 when absent, or when there is no (such) meta table."""
    try:
        row = conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return int(row[0]) if row is not None else 0
    except (sqlite3.OperationalError, ValueError):
        return 0


def check_schema(conn: sqlite3.Connection) -> None:
    """Raises StoreError unless `conn` holds an initialised operator store of this schema: what
    a backup must be, to be made or restored."""
    held = _meta_int(conn, "schema_version")
    if not held:
        raise StoreError("not an initialised operator store")
    problem = schema_problem(held, advice="use that release for it")
    if problem:
        raise StoreError(f"not an operator store this release reads: it {problem}")


def schema_problem(
    held: int, advice: str = "run that release, or restore a backup of this one"
) -> str | None:
    """What is wrong with a store of schema version `held` (0: none recorded), to follow "the
    store ..."; None when this release reads it. `advice` follows another release's version."""
    if held == SCHEMA_VERSION:
        return None
    if not held:
        return "is not initialised; run `uid2-operator init`"
    return (
        f"has schema version {held}, not {SCHEMA_VERSION}: it was made by another release of "
        f"uid2-operator; {advice}"
    )


# How long each try for the write lock at start-up waits: the main thread runs a stop signal's
# handler only between tries.
_START_LOCK_STEP_S = 0.2


class OperatorStore:
    """Open with `OperatorStore.open(data_dir)` (must be initialised) or `.create(data_dir)`."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, watch: StoreWatch | None = None
    ) -> None:
        self._conn = conn
        self._path = path
        self._watch = watch or StoreWatch(StoreFile.of(path))
        self._lock = threading.Lock()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path | str, *, check: bool = True) -> OperatorStore:
        """`check`: SQLite's quick_check; `serve` runs it once, before the state loads."""
        directory = Path(data_dir)
        require_data_dir(directory, StoreError)
        path = directory / DB_FILE
        if not path.exists():
            raise StoreError(f"no operator store in {data_dir}; run `uid2-operator init` first")
        store = cls(open_db(path, StoreError, check=check), path)
        problem = schema_problem(store.meta_int("schema_version"))
        if problem:
            store.close()
            raise StoreError(f"the store in {data_dir} {problem}")
        return store

    @classmethod
    def create(cls, data_dir: Path | str) -> OperatorStore:
        """Opens the store, creating the file and tables if absent (not the initial data)."""
        directory = Path(data_dir)
        require_data_dir(directory, StoreError, create=True)
        path = directory / DB_FILE
        return cls(open_db(path, StoreError, schema=_SCHEMA), path)

    def reader(self) -> OperatorStore:
        """A second connection to the same file, for a background reader thread; it watches
        the file with this one (`check_lost`)."""
        return OperatorStore(open_db(self._path, StoreError, check=False), self._path, self._watch)

    def close(self, wait_s: float = 2.0) -> None:
        close_when_free(self._conn, self._lock, wait_s, self._watch)

    @property
    def path(self) -> Path:
        return self._path

    def check_lost(self) -> bool:
        """Whether the store file is no longer the one opened (sqlite_db.StoreWatch), looked at
        once a second at most; a reader calls it before reading."""
        return self._watch.poll(self._conn, self._lock)

    @property
    def is_lost(self) -> bool:
        """Whether the store was found lost already (no lock, no `stat`: for a health check
        on an event loop)."""
        return self._watch.lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        """`callback` runs once, when a write or `check_lost` first finds the store file
        replaced."""
        self._watch.on_lost(callback)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, synced before it ends (`sqlite_db.write_transaction`)."""
        return write_transaction(self._conn, self._lock, self._watch)

    # -- meta and change detection ---------------------------------------------------------

    def data_version(self) -> int:
        """SQLite's per-connection counter; it moves when another connection commits."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def meta(self, key: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        if row is None:
            return None
        value = row[0]
        return value if isinstance(value, bytes) else str(value).encode()

    def meta_int(self, key: str) -> int:
        with self._lock:
            return _meta_int(self._conn, key)

    def versions(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT k, v FROM meta WHERE k LIKE 'ver:%'").fetchall()
        found = {str(k)[4:]: int(v) for k, v in rows}
        return {t: found.get(t, 0) for t in TABLES}

    @staticmethod
    def bump(conn: sqlite3.Connection, table: str) -> None:
        if table not in TABLES:  # a typo would bump a counter no process watches
            raise ValueError(f"unknown table {table!r}")
        conn.execute(
            "INSERT INTO meta(k, v) VALUES (?, 1) ON CONFLICT(k) DO UPDATE SET v = v + 1",
            (f"ver:{table}",),
        )

    @staticmethod
    def set_meta(conn: sqlite3.Connection, key: str, value: bytes | int | str) -> None:
        conn.execute(
            "INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            (key, value),
        )

    @staticmethod
    def longest_token_lifetime_in(conn: sqlite3.Connection) -> int:
        """The longest token lifetime a serve of this store has issued with (0: none yet)."""
        return _meta_int(conn, LONGEST_LIFETIME_META)

    @staticmethod
    def longest_refresh_lifetime_in(conn: sqlite3.Connection) -> int:
        """The longest refresh token lifetime a serve of this store has issued with (0: none
        yet): how long a superseded refresh key must still decrypt."""
        return _meta_int(conn, LONGEST_REFRESH_LIFETIME_META)

    def longest_token_lifetime(self) -> int:
        return self.meta_int(LONGEST_LIFETIME_META)

    def note_lifetimes(
        self,
        token_lifetime_s: int,
        refresh_lifetime_s: int,
        *,
        give_up: Callable[[], bool] = lambda: False,
        on_wait: Callable[[], None] = lambda: None,
    ) -> None:
        """Records that tokens and refresh tokens of these lifetimes are issued from this
        store, each when longer than any before: what decryptors must go on accepting
        (LONGEST_LIFETIME_META) and how long key rotation keeps the keys that decrypt them.
        Read first: a start with the usual lifetimes takes no write lock (another process's
        salt rotation may hold it).

        At start-up, before anything else uses this connection. While another process holds
        the write lock, `on_wait` is called once and the lock is tried again every
        _START_LOCK_STEP_S, up to BUSY_TIMEOUT_S (then StoreBusy); `give_up()` true between
        tries returns without recording (a stop signal: the service will serve nothing). One
        wait of SQLite's whole busy timeout held the main thread, and SIGTERM, for 30 s."""
        wanted = {
            LONGEST_LIFETIME_META: token_lifetime_s,
            LONGEST_REFRESH_LIFETIME_META: refresh_lifetime_s,
        }
        if all(v <= self.meta_int(k) for k, v in wanted.items()):
            return
        self._conn.execute(f"PRAGMA busy_timeout={int(_START_LOCK_STEP_S * 1000)}")
        try:
            waiting_since: float | None = None
            while True:
                try:
                    self._record_lifetimes(wanted)
                    return
                except StoreBusy:
                    if give_up():
                        return
                    now = time.monotonic()
                    if waiting_since is None:
                        waiting_since = now
                        on_wait()
                    elif now - waiting_since >= BUSY_TIMEOUT_S:
                        raise
        finally:
            self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")

    def _record_lifetimes(self, wanted: Mapping[str, int]) -> None:
        with self.transaction() as conn:
            longer = {k: v for k, v in wanted.items() if v > _meta_int(conn, k)}
            for key, lifetime_s in longer.items():
                self.set_meta(conn, key, lifetime_s)
            if LONGEST_LIFETIME_META in longer:
                self.bump(conn, "keys")  # every process publishes it with its keys

    def is_initialised(self) -> bool:
        return self.meta_int("schema_version") == SCHEMA_VERSION

    # -- rotation times --------------------------------------------------------------------

    def newest_key_created_s(self, keyset_id: int) -> int | None:
        with self._lock:
            return self.newest_key_created_in(self._conn, keyset_id)

    @staticmethod
    def newest_key_created_in(conn: sqlite3.Connection, keyset_id: int) -> int | None:
        """When the keyset's newest key was created (epoch s): its last rotation, or `init`."""
        row = conn.execute(
            "SELECT MAX(created) FROM keys WHERE keyset_id = ?", (keyset_id,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def salts_rotated_ms(self) -> int | None:
        with self._lock:
            return self.salts_rotated_in(self._conn)

    @staticmethod
    def salts_rotated_in(conn: sqlite3.Connection) -> int | None:
        """When the salts were last rotated (epoch ms); None when never. Rotations made before
        the time was recorded with them are found in the buckets' own rotation times."""
        row = conn.execute("SELECT v FROM meta WHERE k = ?", (SALTS_ROTATED_META,)).fetchone()
        if row is not None:
            return int(row[0])
        blob = conn.execute("SELECT data FROM salt_blobs WHERE name = 'rotated_at'").fetchone()
        latest = 0 if blob is None else latest_rotation_ms(bytes(blob[0]))
        return latest or None

    @classmethod
    def set_salts_rotated_ms(cls, conn: sqlite3.Connection, now_ms: int) -> None:
        cls.set_meta(conn, SALTS_ROTATED_META, now_ms)

    # -- salts -----------------------------------------------------------------------------

    def load_salt_blobs(self) -> dict[str, bytes]:
        with self._lock:
            return self.read_salt_blobs(self._conn)

    def salt_blobs_with_version(self) -> tuple[int, dict[str, bytes]]:
        """The salts and their version counter, from one snapshot (one read transaction)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                return self.salts_version_in(self._conn), self.read_salt_blobs(self._conn)
            finally:
                self._conn.execute("COMMIT")

    @staticmethod
    def salts_version_in(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT v FROM meta WHERE k = 'ver:salts'").fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def read_salt_blobs(conn: sqlite3.Connection) -> dict[str, bytes]:
        """Inside a transaction: the salts a read-modify-write starts from."""
        rows = conn.execute("SELECT name, data FROM salt_blobs").fetchall()
        return {str(n): bytes(d) for n, d in rows}

    @classmethod
    def write_salt_blobs(cls, conn: sqlite3.Connection, blobs: Mapping[str, bytes]) -> None:
        conn.execute("DELETE FROM salt_blobs")
        conn.executemany("INSERT INTO salt_blobs(name, data) VALUES (?, ?)", list(blobs.items()))
        cls.bump(conn, "salts")

    # -- sites -----------------------------------------------------------------------------

    def sites(self) -> list[SiteRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT site_id, name, domains, app_names FROM sites ORDER BY site_id"
            ).fetchall()
        return [
            SiteRow(int(s), str(n), tuple(json.loads(d)), tuple(json.loads(a)))
            for s, n, d, a in rows
        ]

    @classmethod
    def upsert_site(cls, conn: sqlite3.Connection, site: SiteRow) -> None:
        conn.execute(
            "INSERT INTO sites(site_id, name, domains, app_names) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(site_id) DO UPDATE SET name = excluded.name, "
            "domains = excluded.domains, app_names = excluded.app_names",
            (
                site.site_id,
                site.name,
                json.dumps(list(site.domains)),
                json.dumps(list(site.app_names)),
            ),
        )
        cls.bump(conn, "sites")

    @staticmethod
    def site_exists(conn: sqlite3.Connection, site_id: int) -> bool:
        row = conn.execute("SELECT 1 FROM sites WHERE site_id = ?", (site_id,)).fetchone()
        return row is not None

    # -- keysets and keys ------------------------------------------------------------------

    def keysets(self) -> list[KeysetRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT keyset_id, site_id, name, allowed_sites, enabled, is_default "
                "FROM keysets ORDER BY keyset_id"
            ).fetchall()
        return [_keyset_row(r) for r in rows]

    def key_rows(self) -> list[KeyRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT key_id, keyset_id, site_id, created, activates, expires, secret "
                "FROM keys ORDER BY activates, key_id"
            ).fetchall()
        return [_key_row(r) for r in rows]

    @classmethod
    def insert_keyset(cls, conn: sqlite3.Connection, ks: KeysetRow) -> None:
        allowed = None if ks.allowed_sites is None else json.dumps(list(ks.allowed_sites))
        conn.execute(
            "INSERT INTO keysets(keyset_id, site_id, name, allowed_sites, enabled, is_default) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ks.keyset_id, ks.site_id, ks.name, allowed, int(ks.enabled), int(ks.is_default)),
        )
        cls.bump(conn, "keys")

    @classmethod
    def set_allowed_sites(
        cls, conn: sqlite3.Connection, keyset_id: int, allowed: tuple[int, ...] | None
    ) -> None:
        conn.execute(
            "UPDATE keysets SET allowed_sites = ? WHERE keyset_id = ?",
            (None if allowed is None else json.dumps(list(allowed)), keyset_id),
        )
        cls.bump(conn, "keys")

    @staticmethod
    def next_keyset_id(conn: sqlite3.Connection, minimum: int) -> int:
        row = conn.execute("SELECT MAX(keyset_id) FROM keysets").fetchone()
        return max(minimum, int(row[0] or 0) + 1)

    @staticmethod
    def default_keyset_of(conn: sqlite3.Connection, site_id: int) -> int | None:
        row = conn.execute(
            "SELECT keyset_id FROM keysets WHERE site_id = ? AND is_default = 1", (site_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def keysets_in(conn: sqlite3.Connection) -> list[KeysetRow]:
        rows = conn.execute(
            "SELECT keyset_id, site_id, name, allowed_sites, enabled, is_default FROM keysets"
        ).fetchall()
        return [_keyset_row(r) for r in rows]

    def token_key_rows(self) -> list[KeyRow]:
        with self._lock:
            return self.token_keys_in(self._conn)

    @staticmethod
    def token_keys_in(conn: sqlite3.Connection) -> list[KeyRow]:
        """The master and refresh keysets' keys, which every token needs: what scheduled
        rotation checks every minute, without reading every site's keys."""
        rows = conn.execute(
            "SELECT key_id, keyset_id, site_id, created, activates, expires, secret FROM keys "
            "WHERE keyset_id IN (?, ?)",
            (MASTER_KEYSET_ID, REFRESH_KEYSET_ID),
        ).fetchall()
        return [_key_row(r) for r in rows]

    @staticmethod
    def keys_in(conn: sqlite3.Connection) -> list[KeyRow]:
        rows = conn.execute(
            "SELECT key_id, keyset_id, site_id, created, activates, expires, secret FROM keys"
        ).fetchall()
        return [_key_row(r) for r in rows]

    @classmethod
    def insert_key(
        cls,
        conn: sqlite3.Connection,
        *,
        keyset_id: int,
        site_id: int,
        created_s: int,
        activates_s: int,
        expires_s: int,
        secret: bytes,
    ) -> int:
        cur = conn.execute(
            "INSERT INTO keys(keyset_id, site_id, created, activates, expires, secret) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (keyset_id, site_id, created_s, activates_s, expires_s, secret),
        )
        cls.bump(conn, "keys")
        return int(cur.lastrowid or 0)

    @classmethod
    def set_key_expiry(cls, conn: sqlite3.Connection, key_id: int, expires_s: int) -> None:
        conn.execute("UPDATE keys SET expires = ? WHERE key_id = ?", (expires_s, key_id))
        cls.bump(conn, "keys")

    @classmethod
    def delete_keys(cls, conn: sqlite3.Connection, key_ids: Iterable[int]) -> int:
        ids = [(k,) for k in key_ids]
        if not ids:
            return 0
        conn.executemany("DELETE FROM keys WHERE key_id = ?", ids)
        cls.bump(conn, "keys")
        return len(ids)

    # -- clients ---------------------------------------------------------------------------

    def clients(self) -> list[ClientRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT client_id, key_id, name, site_id, roles, key_salt, key_hash, secret, "
                "disabled, created FROM clients ORDER BY client_id"
            ).fetchall()
        return [
            ClientRow(
                client_id=int(r[0]),
                key_id=str(r[1]),
                name=str(r[2]),
                site_id=int(r[3]),
                roles=tuple(x for x in str(r[4]).split(",") if x),
                key_salt=bytes(r[5]),
                key_hash=bytes(r[6]),
                secret=str(r[7]),
                disabled=bool(r[8]),
                created_ms=int(r[9]),
            )
            for r in rows
        ]

    @classmethod
    def insert_client(cls, conn: sqlite3.Connection, c: ClientRow) -> int:
        cur = conn.execute(
            "INSERT INTO clients(key_id, name, site_id, roles, key_salt, key_hash, secret, "
            "disabled, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                c.key_id,
                c.name,
                c.site_id,
                ",".join(c.roles),
                c.key_salt,
                c.key_hash,
                c.secret,
                int(c.disabled),
                c.created_ms,
            ),
        )
        cls.bump(conn, "clients")
        return int(cur.lastrowid or 0)

    @classmethod
    def set_clients_disabled(
        cls, conn: sqlite3.Connection, *, name: str | None, key_id: str | None, disabled: bool
    ) -> int:
        if key_id is not None:
            cur = conn.execute(
                "UPDATE clients SET disabled = ? WHERE key_id = ?", (int(disabled), key_id)
            )
        else:
            cur = conn.execute(
                "UPDATE clients SET disabled = ? WHERE name = ?", (int(disabled), name)
            )
        cls.bump(conn, "clients")
        return int(cur.rowcount)

    @staticmethod
    def client_name_exists(conn: sqlite3.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM clients WHERE name = ?", (name,)).fetchone() is not None

    @staticmethod
    def client_name_sites(conn: sqlite3.Connection, name: str) -> set[int]:
        """The sites of the clients named `name` (one, unless a data dir predates the rule)."""
        rows = conn.execute("SELECT DISTINCT site_id FROM clients WHERE name = ?", (name,))
        return {int(r[0]) for r in rows}

    # -- delegations -----------------------------------------------------------------------

    def delegations(self) -> list[tuple[int, str]]:
        with self._lock:
            rows = self._conn.execute("SELECT site_id, client_name FROM delegations").fetchall()
        return [(int(s), str(n)) for s, n in rows]

    @classmethod
    def grant(cls, conn: sqlite3.Connection, site_id: int, client_name: str, now_ms: int) -> None:
        conn.execute(
            "INSERT INTO delegations(site_id, client_name, created) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (site_id, client_name, now_ms),
        )
        cls.bump(conn, "delegations")

    @classmethod
    def revoke(cls, conn: sqlite3.Connection, site_id: int, client_name: str) -> int:
        cur = conn.execute(
            "DELETE FROM delegations WHERE site_id = ? AND client_name = ?", (site_id, client_name)
        )
        cls.bump(conn, "delegations")
        return int(cur.rowcount)

    # -- client-side key pairs -------------------------------------------------------------

    def keypairs(self) -> list[KeypairRow]:
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT subscription_id, site_id, private_key, disabled, created "
                    "FROM keypairs ORDER BY created, subscription_id"
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
        return [KeypairRow(str(s), int(i), bytes(k), bool(d), int(c)) for s, i, k, d, c in rows]

    @classmethod
    def insert_keypair(cls, conn: sqlite3.Connection, row: KeypairRow) -> None:
        """Raises sqlite3.IntegrityError when the subscription id is taken."""
        conn.execute(_KEYPAIRS_TABLE)
        conn.execute(
            "INSERT INTO keypairs(subscription_id, site_id, private_key, disabled, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (row.subscription_id, row.site_id, row.private_key, int(row.disabled), row.created_ms),
        )
        cls.bump(conn, "keypairs")

    @classmethod
    def set_keypair_disabled(
        cls, conn: sqlite3.Connection, subscription_id: str, disabled: bool
    ) -> int:
        conn.execute(_KEYPAIRS_TABLE)
        cur = conn.execute(
            "UPDATE keypairs SET disabled = ? WHERE subscription_id = ?",
            (int(disabled), subscription_id),
        )
        cls.bump(conn, "keypairs")
        return int(cur.rowcount)

    # -- opt-outs --------------------------------------------------------------------------

    def add_optout(self, flh: bytes, now_ms: Callable[[], int]) -> tuple[int, int]:
        """Records an opt-out durably; returns (its sequence number, the first opt-out time).

        The time is read once the write lock is held, and never below the last row's: opt-out
        times then rise with the sequence (commit) order across every process on the data, which
        is what a WatchOptOuts reader resuming at "last time seen minus a margin" relies on. A
        time read before waiting for the lock (up to the busy timeout) could be committed after
        later-stamped rows and fall behind a resuming reader's margin."""
        with self.transaction() as conn:
            last = conn.execute(
                "SELECT opted_out_at FROM optouts ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            stamp = max(now_ms(), int(last[0]) if last else 0)
            conn.execute(
                "INSERT INTO optouts(flh, opted_out_at) VALUES (?, ?) ON CONFLICT(flh) DO NOTHING",
                (flh, stamp),
            )
            row = conn.execute(
                "SELECT seq, opted_out_at FROM optouts WHERE flh = ?", (flh,)
            ).fetchone()
        return int(row[0]), int(row[1])

    def optouts_after(self, seq: int) -> list[OptOutRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, flh, opted_out_at FROM optouts WHERE seq > ? ORDER BY seq", (seq,)
            ).fetchall()
        return [OptOutRow(int(s), bytes(f), int(t)) for s, f, t in rows]


def _keyset_row(r: tuple[object, ...]) -> KeysetRow:
    allowed = None if r[3] is None else tuple(int(x) for x in json.loads(str(r[3])))
    return KeysetRow(
        keyset_id=int(str(r[0])),
        site_id=int(str(r[1])),
        name=str(r[2]),
        allowed_sites=allowed,
        enabled=bool(r[4]),
        is_default=bool(r[5]),
    )


def _key_row(r: tuple[object, ...]) -> KeyRow:
    secret = r[6]
    if not isinstance(secret, bytes):
        raise StoreError("a key secret in the store is not a blob; the store is damaged")
    return KeyRow(
        key_id=int(str(r[0])),
        keyset_id=int(str(r[1])),
        site_id=int(str(r[2])),
        created_s=int(str(r[3])),
        activates_s=int(str(r[4])),
        expires_s=int(str(r[5])),
        secret=secret,
    )
