"""API keys the SSP issued, to publishers (SubmitImpression) and to bid-stream subscribers
(StreamBidRequests). Keys are stored only as salted SHA-256 hashes, in SQLite in the data dir;
a JSON publishers file (`--publishers-file`) is the alternative config. A stored account can be
disabled (`uid2-ssp publisher disable`): a serving SSP refuses its key from its next call on.

Key material (key ids, key secrets, salts) comes from the `rng` and creation times from the
`clock` the caller passes: the CLI and the server pass the system ones."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from svc_common import json_text, store_backup
from svc_common.clock import Clock
from svc_common.names import account_name, check_app_name, normalise_domain, site_domain
from svc_common.sensitive import shown
from svc_common.settings import SettingError
from svc_common.settings import api_key as check_api_key
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

DB_NAME = "ssp.sqlite3"
# The store's schema as this release leaves it (SQLite's user_version); a newer one is refused.
SCHEMA_VERSION = 1
KEY_PREFIX = "UID2-SSP-"
_KEY_ID_BYTES = 8
_KEY_SECRET_BYTES = 32
_SALT_BYTES = 16
Rng = Callable[[int], bytes]


class AccountKind(Enum):
    PUBLISHER = "publisher"
    SUBSCRIBER = "subscriber"


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    kind: AccountKind
    domains: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccountListing:
    """What `publisher list` / `subscriber list` show of an account: never its key's secret
    part or hash. `account.account_id` is the key id, the public part of the key."""

    account: Account
    created_ms: int
    disabled: bool


def normalise_inventory(
    domains: Iterable[str], apps: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A publisher's allowed domains and app bundles as svc_common.names normalises them (the
    operator's `site add` rules), blanks and repeats dropped: one rule for `publisher add` and
    the publishers file. ValueError (one line) names a value that is no domain or app name."""
    return (
        tuple(dict.fromkeys(site_domain(d) for d in domains if d.strip())),
        tuple(dict.fromkeys(check_app_name(a) for a in apps if a.strip())),
    )


def _as_registered(domain: str) -> str:
    """A stored allow-list entry as SubmitImpression compares page domains (normalised): a
    store written before `publisher add` normalised holds them as typed ("bücher.example",
    "news.example.com."), which would otherwise never match again."""
    try:
        return normalise_domain(domain)
    except ValueError:
        return domain


class AccountStore(Protocol):
    def authenticate(self, api_key: str) -> Account | None: ...

    def enabled_accounts(self) -> int:
        """How many accounts (publishers and subscribers) a key may authenticate as now."""

    def on_lost(self, callback: Callable[[], None]) -> None:
        """`callback` runs once if the store's file is found replaced under the service."""

    def check_lost(self) -> bool:
        """Looks (at most once a second) whether the store's file was replaced; True if so."""

    def close(self) -> None: ...


class StoreError(Exception):
    """A store problem the CLI reports in one line (no secrets in the message)."""


# What a backup of this store must hold (`uid2-ssp backup / restore`).
STORE_TABLES = store_backup.requires_tables(StoreError, "SSP", "accounts", version=SCHEMA_VERSION)


def _hash(salt: bytes, api_key: str) -> bytes:
    return hashlib.sha256(salt + api_key.encode("utf-8")).digest()


def _split(api_key: str) -> str | None:
    """The public key id inside an API key, or None when it is not one of ours."""
    if not api_key.startswith(KEY_PREFIX) or len(api_key) > 200:
        return None
    key_id, dot, secret = api_key[len(KEY_PREFIX) :].partition(".")
    if not dot or not key_id or not secret:
        return None
    return key_id


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    key_id     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    salt       BLOB NOT NULL,
    key_hash   BLOB NOT NULL,
    domains    TEXT NOT NULL,
    apps       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    -- 1: `publisher disable` / `subscriber disable`; its key is refused. See _DISABLED_COLUMN
    disabled   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (kind, name)
);
"""
# Stores made before accounts could be disabled get the column on open, every account enabled.
_DISABLED_COLUMN = "disabled INTEGER NOT NULL DEFAULT 0"
_INSERT = (
    "INSERT INTO accounts (key_id, name, kind, salt, key_hash, domains, apps, created_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class SqliteAccountStore:
    def __init__(
        self,
        data_dir: Path,
        *,
        rng: Rng,
        clock: Clock,
        create: bool = False,
    ) -> None:
        require_data_dir(data_dir, StoreError, create=create)
        self._rng = rng
        self._clock = clock
        self._path = data_dir / DB_NAME
        self._conn = open_db(
            self._path,
            StoreError,
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            own_table=("SSP", "accounts"),
        )
        # A disable made by the CLI into a store that replaced this one (a restore) would
        # never be seen: the watch says so, once, and the server reports NOT_SERVING.
        self._watch = StoreWatch(StoreFile.of(self._path))
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[bytes, bytes, Account]] = {}
        try:
            self._add_disabled_column()
            # Changes only when another connection (`uid2-ssp publisher disable`) commits.
            self._data_version = self._read_data_version()
        except (sqlite3.Error, StoreUnavailable) as exc:
            self._conn.close()
            reason = exc.message if isinstance(exc, StoreUnavailable) else str(exc)
            raise StoreError(f"store {self._path} cannot be opened: {reason}") from None

    def _add_disabled_column(self) -> None:
        """Checked again inside the write transaction, so two processes opening the same old
        store do not both add it (the second would fail on a duplicate column)."""
        if "disabled" in self._columns() and schema_version(self._conn) >= SCHEMA_VERSION:
            return
        with write_transaction(self._conn, self._lock):
            columns = self._columns()
            if "key_hash" not in columns:
                # Someone else's accounts table: not ours to alter.
                raise sqlite3.DatabaseError("its accounts table is not the SSP's")
            if "disabled" not in columns:
                self._conn.execute(f"ALTER TABLE accounts ADD COLUMN {_DISABLED_COLUMN}")
            if schema_version(self._conn) < SCHEMA_VERSION:
                stamp_version(self._conn, SCHEMA_VERSION)

    def _columns(self) -> set[str]:
        return {str(row[1]) for row in self._conn.execute("PRAGMA table_info(accounts)")}

    def _read_data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def add(
        self,
        name: str,
        kind: AccountKind,
        domains: tuple[str, ...] = (),
        apps: tuple[str, ...] = (),
        deliver: Callable[[Account, str], None] | None = None,
    ) -> tuple[Account, str]:
        """Creates an account; returns it and its API key (shown once, stored hashed).
        StoreError for a name that may not be logged (`account_name`). `deliver` (the CLI's
        print) runs before the commit: a key nobody could be shown is not kept."""
        try:
            name = account_name(name)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        key_id = self._rng(_KEY_ID_BYTES).hex()
        secret = base64.urlsafe_b64encode(self._rng(_KEY_SECRET_BYTES)).rstrip(b"=").decode()
        api_key = f"{KEY_PREFIX}{key_id}.{secret}"
        salt = self._rng(_SALT_BYTES)
        account = Account(key_id, name, kind, domains, apps)
        try:
            with write_transaction(self._conn, self._lock):
                self._conn.execute(
                    _INSERT,
                    (
                        key_id,
                        name,
                        kind.value,
                        salt,
                        _hash(salt, api_key),
                        json.dumps(list(domains)),
                        json.dumps(list(apps)),
                        self._clock.now_ms(),
                    ),
                )
                if deliver is not None:
                    deliver(account, api_key)
        except sqlite3.IntegrityError:
            raise StoreError(f"a {kind.value} named {shown(name)} already exists") from None
        except StoreUnavailable as exc:
            raise StoreError(exc.message) from None
        except sqlite3.Error as exc:
            # A valid SQLite file whose accounts table is not ours gets past opening.
            raise StoreError(f"store {self._path} cannot be written: {exc}") from None
        return account, api_key

    def authenticate(self, api_key: str) -> Account | None:
        key_id = _split(api_key)
        if key_id is None:
            return None
        # One critical section from the version check to the cache write: a row read before a
        # disable committed must not enter the cache after the disable cleared it.
        with self._lock:
            self._watch.poll(self._conn, None)
            # A disable committed by the CLI reaches the cache before the next call; this read
            # costs about 2 us, no disk access.
            version = self._read_data_version()
            if version != self._data_version:
                self._cache.clear()
                self._data_version = version
            hit = self._cache.get(key_id)
            if hit is None:
                hit = self._load(key_id)
                if hit is None:
                    return None
                self._cache[key_id] = hit
        salt, key_hash, account = hit
        if not hmac.compare_digest(_hash(salt, api_key), key_hash):
            return None
        return account

    def _load(self, key_id: str) -> tuple[bytes, bytes, Account] | None:
        row = self._conn.execute(
            "SELECT name, kind, salt, key_hash, domains, apps FROM accounts"
            " WHERE key_id = ? AND disabled = 0",
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        name, kind, salt, key_hash, domains, apps = row
        account = Account(
            key_id,
            name,
            AccountKind(kind),
            tuple(_as_registered(d) for d in json.loads(domains)),
            tuple(json.loads(apps)),
        )
        return bytes(salt), bytes(key_hash), account

    def enabled_accounts(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM accounts WHERE disabled = 0").fetchone()
        return int(row[0])

    def listing(self, kind: AccountKind) -> list[AccountListing]:
        """The accounts of `kind`, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key_id, name, domains, apps, created_ms, disabled FROM accounts"
                " WHERE kind = ? ORDER BY created_ms, name",
                (kind.value,),
            ).fetchall()
        return [
            AccountListing(
                Account(key_id, name, kind, tuple(json.loads(doms)), tuple(json.loads(apps))),
                created_ms,
                bool(disabled),
            )
            for key_id, name, doms, apps, created_ms, disabled in rows
        ]

    def set_disabled(self, kind: AccountKind, name: str, disabled: bool) -> None:
        """Disables (or enables again) the account of `kind` named `name`; StoreError when
        there is none. Serving processes on the same store see it at their next call."""
        try:
            with write_transaction(self._conn, self._lock):
                changed = self._conn.execute(
                    "UPDATE accounts SET disabled = ? WHERE kind = ? AND name = ?",
                    (int(disabled), kind.value, name),
                ).rowcount
                # Another connection's commit moves data_version; this one's does not.
                self._cache.clear()
        except StoreUnavailable as exc:
            raise StoreError(exc.message) from None
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path} cannot be written: {exc}") from None
        if changed == 0:
            raise StoreError(f"no {kind.value} named {shown(name)}")

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._watch.on_lost(callback)

    def check_lost(self) -> bool:
        return self._watch.poll(self._conn, self._lock)

    def close(self) -> None:
        close_when_free(self._conn, self._lock, 2.0, self._watch)


class FileAccountStore:
    """Accounts from a JSON file: {"publishers": [{"name", "api_key", "domains"?, "apps"?}],
    "subscribers": [{"name", "api_key"}]}, either list optional but not both, and at least one
    account in all. Keys are hashed in memory on load. Any other key, at the top or in an
    entry, is refused: it is a typo or a file of another shape, and ignoring it would drop
    accounts or inventory silently.

    A publisher must register at least one domain or app (it sells only inventory it
    registered), and an API key names one account: a key listed twice is refused rather than
    letting the later entry silently take it over. Two publishers (or two subscribers) of one
    name are refused, as `publisher add` refuses them."""

    def __init__(self, path: Path, *, rng: Rng) -> None:
        try:
            doc: Any = json_text.loads(path.read_text("utf-8"), unique_keys=True)
        except json_text.DuplicateKey as exc:
            raise StoreError(f"publishers file {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            # Where, not what: the text there may be an API key.
            raise StoreError(
                f"cannot read publishers file {path}: JSONDecodeError at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read publishers file {path}: {type(exc).__name__}") from None
        if not isinstance(doc, dict):
            raise StoreError("publishers file must hold a JSON object")
        _check_keys(doc, _SECTIONS, "publishers file")
        if not _SECTIONS & doc.keys():
            # Anything else (a single account's object, a misspelt section) would start an SSP
            # that refuses every key, with nothing saying why.
            raise StoreError('publishers file needs a "publishers" or "subscribers" list')
        self._salt = rng(_SALT_BYTES)
        self._by_hash: dict[bytes, Account] = {}
        where_of: dict[bytes, str] = {}
        named: dict[tuple[AccountKind, str], str] = {}
        for kind, section in (
            (AccountKind.PUBLISHER, "publishers"),
            (AccountKind.SUBSCRIBER, "subscribers"),
        ):
            entries = doc.get(section, [])
            if not isinstance(entries, list):
                raise StoreError(f"publishers file: {section} must be a list")
            for i, entry in enumerate(entries):
                where = f"{section}[{i}]"
                if not isinstance(entry, dict):
                    raise StoreError(f"publishers file: {where} must be an object")
                name, key = entry.get("name"), entry.get("api_key")
                if not isinstance(name, str) or not name or not isinstance(key, str) or not key:
                    raise StoreError(f"publishers file: {where} needs name and api_key")
                where = f"{where} ({shown(name)})"
                _check_keys(entry, _ENTRY_FIELDS[kind], f"publishers file: {where}")
                try:
                    name = account_name(name)
                except ValueError as exc:
                    raise StoreError(f"publishers file: {where}: {exc}") from None
                # As `publisher add` refuses it: the name is how logs and metrics tell accounts
                # apart. Compared normalised, so "News" and its fullwidth form are one name.
                if (kind, name) in named:
                    raise StoreError(
                        f"publishers file: {where}: a {kind.value} named {shown(name)} is already "
                        f"listed, as {named[kind, name]}"
                    )
                named[kind, name] = where
                try:
                    check_api_key(key)  # as a flag's key: one no caller can send would never match
                except SettingError as exc:
                    raise StoreError(f"publishers file: {where} api_key {exc}") from None
                try:
                    domains, apps = normalise_inventory(
                        _strings(entry, "domains", where), _strings(entry, "apps", where)
                    )
                except ValueError as exc:
                    raise StoreError(f"publishers file: {where}: {exc}") from None
                if kind is AccountKind.PUBLISHER and not domains and not apps:
                    raise StoreError(
                        f"publishers file: {where} registers no domains or apps, so it could "
                        "sell nothing"
                    )
                key_hash = _hash(self._salt, key)
                if key_hash in where_of:
                    raise StoreError(
                        f"publishers file: {where} has the same api_key as {where_of[key_hash]}"
                    )
                where_of[key_hash] = where
                self._by_hash[key_hash] = Account(f"{section}-{i}", name, kind, domains, apps)
        if not self._by_hash:
            # Empty lists: an SSP that refuses every key, as with no list at all.
            raise StoreError(f"publishers file {path} lists no accounts: it needs at least one")

    def authenticate(self, api_key: str) -> Account | None:
        return self._by_hash.get(_hash(self._salt, api_key))

    def enabled_accounts(self) -> int:
        return len(self._by_hash)

    def on_lost(self, callback: Callable[[], None]) -> None:
        pass  # read once at start: nothing to lose

    def check_lost(self) -> bool:
        return False

    def close(self) -> None:
        pass


_SECTIONS = frozenset(("publishers", "subscribers"))
_ENTRY_FIELDS = {
    AccountKind.PUBLISHER: ("name", "api_key", "domains", "apps"),
    AccountKind.SUBSCRIBER: ("name", "api_key"),
}


def _check_keys(obj: dict[str, Any], known: Iterable[str], where: str) -> None:
    # A misspelt key ("domain", "publisher") would otherwise be dropped without a word.
    allowed = list(known)
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        expected = ", ".join(f'"{k}"' for k in sorted(allowed))
        # Cut short: an API key pasted where a field name belongs is not echoed whole.
        raise StoreError(f"{where}: unknown key {shown(unknown[0], 40)} (expected {expected})")


def _strings(entry: dict[str, Any], field: str, where: str) -> list[str]:
    # A bare string would otherwise be iterated into one-character domains.
    value = entry.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StoreError(f"publishers file: {where}: {field} must be a list of strings")
    return value
