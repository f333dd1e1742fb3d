"""The operator's in-memory state: immutable snapshots of clients, sites, delegations, keys,
client-side key pairs and salts, swapped atomically as whole objects, and an append-only opt-out
index.

Requests read only this state; nothing on the request path touches the disk except writes.
`StateLoader.load()` fills it at start; `StateLoader.sync()` (called by a background thread
every `sync_interval_s`) picks up other processes' commits: it is gated by SQLite's cheap
`PRAGMA data_version`, then per-table change counters; opt-outs are read incrementally by
sequence number; salts are reloaded only when their counter moves."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog

from operator_svc.store import ClientRow, KeypairRow, OperatorStore, OptOutRow
from svc_common.clock import Clock
from svc_common.sqlite_db import StoreLost
from uid2_crypto.client_side import ServerKeypair
from uid2_crypto.identity import IdentityScope, identity_hash
from uid2_crypto.keys import Key, KeyRing, Keyset
from uid2_crypto.salts import SaltSet, bucket_index, first_level_hash, raw_uid2

_log = structlog.get_logger("state")


@dataclass(frozen=True)
class Client:
    """An authenticated API caller."""

    client_id: int
    key_id: str
    name: str
    site_id: int
    roles: frozenset[str]
    key_salt: bytes = field(repr=False)
    key_hash: bytes = field(repr=False)
    # The HTTP API's shared secret (base64 of 32 bytes); never logged.
    secret: str = field(repr=False)
    disabled: bool = False


@dataclass(frozen=True)
class Site:
    site_id: int
    name: str
    domains: tuple[str, ...]
    app_names: tuple[str, ...]


@dataclass(frozen=True)
class Keypair:
    """A client-side token generation subscription of a site (the page's key to the operator)."""

    subscription_id: str
    site_id: int
    server: ServerKeypair = field(repr=False)
    disabled: bool = False


@dataclass(frozen=True)
class KeySnapshot:
    keyring: KeyRing
    keysets: Mapping[int, Keyset]
    # site id -> its default keyset id
    default_keyset: Mapping[int, int]
    # The longest token lifetime any serve issued with from this store (0: none recorded).
    longest_token_lifetime_s: int = 0


@dataclass(frozen=True)
class TestIdentities:
    """First-level hashes of the reference §7 test identities (email and phone forms)."""

    never_optout: frozenset[bytes]
    always_optout: frozenset[bytes]
    refresh_optout: frozenset[bytes]

    @classmethod
    def for_salt(cls, first_level_salt: str) -> TestIdentities:
        def flh(kind: str, value: str) -> bytes:
            return first_level_hash(identity_hash(kind, value)[1], first_level_salt)

        return cls(
            never_optout=frozenset(
                {flh("email", "validate@example.com"), flh("phone", "+12345678901")}
            ),
            always_optout=frozenset(
                {flh("email", "optout@example.com"), flh("phone", "+00000000000")}
            ),
            refresh_optout=frozenset(
                {flh("email", "refresh-optout@example.com"), flh("phone", "+00000000002")}
            ),
        )


def raw_uids(flh: bytes, salts: SaltSet) -> tuple[bytes, ...]:
    """The raw UID2s an opted-out first-level hash is known by: under the bucket's salt, and
    under the salt before its last rotation, which tokens issued before it still carry. The one
    rule for GetOptOutStatus (OptOutIndex) and WatchOptOuts (OptOutService.watch)."""
    bucket = bucket_index(flh)
    current = raw_uid2(flh, salts.salt(bucket))
    previous = salts.last_previous_salt(bucket)
    return (current,) if previous is None else (current, raw_uid2(flh, previous))


# An opt-out this long before its bucket's rotation, or later, is streamed again under the new
# salt when a process switches to it. Tokens under the new salt exist only from the rotation on,
# and a process learns of an opt-out within its sync interval (a second): an earlier one was
# known everywhere before any such token, and refused it. The margin covers clocks that differ.
RESEND_AFTER_ROTATION_MS = 60_000
# How many opt-outs a salt switch's preparation goes through between two reads of other
# processes' opt-outs (about 0.1 s of a full rebuild's work on the development box).
PREPARE_CHUNK = 8192
# The events' list is split into blocks of this many for `first_position_from`.
EVENT_BLOCK = 4096


@dataclass(frozen=True)
class SaltSwitch:
    """New salts and the raw UID2 index's changes for them (`OptOutIndex.prepare_salts`)."""

    salts: SaltSet
    old: SaltSet  # the salts it replaces
    changed: frozenset[int]  # the buckets whose salt changed
    events_seen: int  # opt-outs recorded when it was prepared
    rebuild: bool  # `fresh` is the whole index (most buckets changed)
    fresh: dict[bytes, int]  # raw UID2 -> opted out at, under the new salts
    stale: set[bytes]  # raw UID2s the new salts no longer give
    # Opt-outs in rotated buckets from about the rotation on, for the streams to send again.
    resend: list[tuple[int, bytes]]


class OptOutIndex:
    """Opt-outs by first-level hash, plus their raw UID2s under the current salts and the ones
    before the buckets' last rotation (for GetOptOutStatus). Reads are lock-free dict lookups;
    writers and waiters use `cond`."""

    def __init__(self, salts: SaltSet, never_opted_out: frozenset[bytes] = frozenset()) -> None:
        self.cond = threading.Condition()
        # The salts raw UID2s are computed under; changed only with `apply_salts`, under `cond`,
        # so an opt-out added while the salts rotate is indexed under the salts it will be
        # looked up with.
        self._salts = salts
        # The never-opt-out test identities (reference §7): their opt-outs are recorded and
        # acknowledged, as the official operator does, but never shown as opt-outs (status,
        # stream), or readers would reject tokens the operator keeps issuing for them.
        self._never = never_opted_out
        self._by_flh: dict[bytes, int] = {}
        self._by_raw: dict[bytes, int] = {}
        # (opted_out_at ms, first-level hash) in the order they were recorded.
        self._events: list[tuple[int, bytes]] = []
        # The latest time among the events up to the end of each whole block, and among all:
        # a reader resuming from a time skips the blocks before it in O(log n). A scan of every
        # event held the first answer of a resumed stream for 0.6 s per 5 million opt-outs,
        # per reader, all of them sharing one GIL after an operator restart.
        self._block_latest: list[int] = []
        self._latest = 0
        # The store's rows up to this sequence number have all been read (`add_synced`). This
        # process's own opt-outs (`add`) do not move it: rows other processes committed just
        # before them, with lower numbers, must still be read at the next sync.
        self.synced_seq = 0
        self.closed = False

    def opted_out_at(self, flh: bytes) -> int | None:
        return self._by_flh.get(flh)

    def raw_opted_out_at(self, raw_uid: bytes) -> int | None:
        return self._by_raw.get(raw_uid)

    def __len__(self) -> int:
        return len(self._by_flh)

    def add_synced(self, rows: list[OptOutRow]) -> int:
        """Adds every store row after `synced_seq` (in sequence order) and moves it past them;
        returns how many were new."""
        with self.cond:
            new = self.add(rows)
            if rows:
                self.synced_seq = max(self.synced_seq, rows[-1].seq)
            return new

    def add(self, rows: list[OptOutRow]) -> int:
        """Adds rows (idempotent by first-level hash); returns how many were new."""
        new = 0
        with self.cond:
            salts = self._salts
            for row in rows:
                if row.flh in self._by_flh:
                    continue
                self._by_flh[row.flh] = row.opted_out_at_ms
                if row.flh in self._never:
                    continue
                for raw in raw_uids(row.flh, salts):
                    self._by_raw[raw] = row.opted_out_at_ms
                self._record((row.opted_out_at_ms, row.flh))
                new += 1
            if new:
                self.cond.notify_all()
        return new

    def prepare_salts(
        self, salts: SaltSet, between: Callable[[], object] | None = None
    ) -> SaltSwitch:
        """The raw UID2 index's changes for new `salts`, computed without the lock: recomputing
        every opt-out under it held up this process's own opt-outs, the opt-out streams and,
        the sync being one thread, other processes' opt-outs, clients and keys for seconds
        (2.5 s with 500,000 opt-outs). Only opt-outs in the buckets the new salts changed are
        recomputed (a daily rotation: 1 in 365); most of all of them, the index is rebuilt.
        One thread (the sync) prepares and applies, so the salts do not change in between.

        `between` runs every PREPARE_CHUNK opt-outs: the sync reads other processes' new
        opt-outs there. A full rebuild takes seconds per million opt-outs, and meanwhile they
        went unread: tokens kept being issued to users who had opted out through another
        process, and the streams sent them so late that a reader resuming from a few seconds
        before the newest opt-out it had seen never got them. Added here, under the old salts,
        they are recomputed by `apply_salts` like this process's own."""
        old = self._salts
        changed = frozenset(salts.changed_buckets(old))
        seen = len(self._events)
        recorded = self._events[:seen]  # appended to only: a copy of what is there now
        rebuild = 2 * len(changed) > len(salts)
        fresh: dict[bytes, int] = {}
        stale: set[bytes] = set()
        resend: list[tuple[int, bytes]] = []
        for n, (ts, flh) in enumerate(recorded, 1):
            if between is not None and n % PREPARE_CHUNK == 0:
                between()
            bucket = bucket_index(flh)
            rotated = bucket in changed
            if rebuild or rotated:
                for raw in raw_uids(flh, salts):
                    fresh[raw] = ts
                if not rebuild:
                    stale.update(raw_uids(flh, old))
            if rotated and ts >= salts.rotated_at(bucket) - RESEND_AFTER_ROTATION_MS:
                resend.append((ts, flh))
        return SaltSwitch(salts, old, changed, seen, rebuild, fresh, stale - fresh.keys(), resend)

    def apply_salts(self, switch: SaltSwitch) -> None:
        """Switches to the prepared salts; the caller holds `cond` (and switches the state's
        salts with it). Opt-outs recorded since `prepare_salts`, under the old salts, are
        recomputed here: a few."""
        salts = switch.salts
        fresh = dict(switch.fresh)
        stale = set(switch.stale)
        meanwhile = [
            (ts, flh)
            for ts, flh in self._events[switch.events_seen :]
            if switch.rebuild or bucket_index(flh) in switch.changed
        ]
        for ts, flh in meanwhile:
            for raw in raw_uids(flh, salts):
                fresh[raw] = ts
            stale.update(raw_uids(flh, switch.old))  # as `add` indexed it
        self._salts = salts
        if switch.rebuild:
            self._by_raw = fresh
        else:
            # New entries before old ones go: a lookup never misses both.
            self._by_raw.update(fresh)
            for raw in stale:
                if raw not in fresh:
                    self._by_raw.pop(raw, None)
        # Streams sent these under the old salts: once more, under the new ones. A process
        # that switched before this one may have issued the user a token under the new salt
        # before it learnt of the opt-out, so every opt-out from around the rotation on
        # (RESEND_AFTER_ROTATION_MS) goes out again, besides those recorded since prepare.
        again = switch.resend + meanwhile
        if again:
            for event in again:
                self._record(event)
            self.cond.notify_all()

    def use_salts(self, salts: SaltSet) -> None:
        """Switches to new salts (`prepare_salts` then `apply_salts` under `cond`)."""
        switch = self.prepare_salts(salts)
        with self.cond:
            self.apply_salts(switch)

    def _record(self, event: tuple[int, bytes]) -> None:
        """Appends `event`; the caller holds `cond`."""
        self._events.append(event)
        self._latest = max(self._latest, event[0])
        if len(self._events) % EVENT_BLOCK == 0:
            self._block_latest.append(self._latest)

    def first_position_from(self, since_ms: int) -> int:
        """A list position before which every event is older than `since_ms`: where a stream
        resuming from `since_ms` starts its backlog. Events are recorded in the order this
        process learnt of them, not by time, so this is not the first newer event's position
        but the start of the first block holding one."""
        with self.cond:
            return bisect.bisect_left(self._block_latest, since_ms) * EVENT_BLOCK

    def events_from(self, position: int) -> tuple[list[tuple[int, bytes]], int]:
        """The events recorded at or after list position `position`, and the next position."""
        with self.cond:
            end = len(self._events)
            return self._events[position:end], end

    def wait_beyond(self, position: int, timeout_s: float) -> bool:
        """Blocks until an event beyond `position` exists, the index closes, or the timeout."""
        with self.cond:
            if len(self._events) > position or self.closed:
                return True
            self.cond.wait(timeout_s)
            return len(self._events) > position

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class OperatorState:
    """What the domain services read. Attributes are replaced whole (atomic under the GIL)."""

    def __init__(
        self,
        *,
        first_level_salt: str,
        identity_scope: IdentityScope,
        salts: SaltSet,
        keys: KeySnapshot,
        clients: Mapping[str, Client],
        sites: Mapping[int, Site],
        delegations: frozenset[tuple[int, str]],
        keypairs: Mapping[str, Keypair] = MappingProxyType({}),
    ) -> None:
        self.first_level_salt = first_level_salt
        self.identity_scope = identity_scope
        self.salts = salts
        self.keys = keys
        self.clients = clients
        self.sites = sites
        self.delegations = delegations
        # subscription id -> key pair
        self.keypairs = keypairs
        self.test_identities = TestIdentities.for_salt(first_level_salt)
        self.optouts = OptOutIndex(salts, self.test_identities.never_optout)


def _client(row: ClientRow) -> Client:
    return Client(
        client_id=row.client_id,
        key_id=row.key_id,
        name=row.name,
        site_id=row.site_id,
        roles=frozenset(row.roles),
        key_salt=row.key_salt,
        key_hash=row.key_hash,
        secret=row.secret,
        disabled=row.disabled,
    )


def _keypair(row: KeypairRow) -> Keypair:
    return Keypair(
        subscription_id=row.subscription_id,
        site_id=row.site_id,
        server=ServerKeypair.from_der(row.private_key),
        disabled=row.disabled,
    )


class StateLoader:
    """Builds `OperatorState` from the store and keeps it in step with it."""

    def __init__(self, store: OperatorStore) -> None:
        self._store = store
        self._versions: dict[str, int] = {}
        self._data_version = -1
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes the loader's own connection (from `OperatorStore.reader()`); after the
        sync thread has stopped, under the lock a running sync holds."""
        with self._lock:
            self._store.close()

    def load(self) -> OperatorState:
        store = self._store
        salt_meta = store.meta("first_level_salt")
        scope_meta = store.meta("identity_scope")
        if salt_meta is None:
            raise RuntimeError("store not initialised")
        self._versions = store.versions()
        self._data_version = store.data_version()
        salts = SaltSet.from_blobs(store.load_salt_blobs())
        state = OperatorState(
            first_level_salt=salt_meta.decode(),
            identity_scope=IdentityScope[(scope_meta or b"UID2").decode()],
            salts=salts,
            keys=self._keys(),
            clients=self._clients(),
            sites=self._sites(),
            delegations=frozenset(store.delegations()),
            keypairs=self._keypairs(),
        )
        state.optouts.add_synced(store.optouts_after(0))
        return state

    def _keys(self) -> KeySnapshot:
        keysets = {
            r.keyset_id: Keyset(
                r.keyset_id,
                r.site_id,
                r.name,
                None if r.allowed_sites is None else frozenset(r.allowed_sites),
                r.enabled,
                r.is_default,
            )
            for r in self._store.keysets()
        }
        keys = [
            Key(r.key_id, r.keyset_id, r.site_id, r.created_s, r.activates_s, r.expires_s, r.secret)
            for r in self._store.key_rows()
        ]
        defaults = {ks.site_id: ks.keyset_id for ks in keysets.values() if ks.is_default}
        return KeySnapshot(
            KeyRing(keys),
            MappingProxyType(keysets),
            MappingProxyType(defaults),
            self._store.longest_token_lifetime(),
        )

    def _clients(self) -> Mapping[str, Client]:
        return MappingProxyType({r.key_id: _client(r) for r in self._store.clients()})

    def _sites(self) -> Mapping[int, Site]:
        return MappingProxyType(
            {
                s.site_id: Site(s.site_id, s.name, s.domains, s.app_names)
                for s in self._store.sites()
            }
        )

    def _keypairs(self) -> Mapping[str, Keypair]:
        return MappingProxyType({r.subscription_id: _keypair(r) for r in self._store.keypairs()})

    def sync(self, state: OperatorState, force: bool = False) -> list[str]:
        """Reloads what changed in the store; returns the names of what was reloaded. What it
        has seen is recorded only once everything loaded: a read that fails leaves the change
        for the next sync (recorded up front, it was lost until the next write to the store;
        what loaded before the failure loads again to the same state)."""
        with self._lock:
            if self._store.check_lost():
                raise StoreLost()  # what the path names now is not what this reads
            dv = self._store.data_version()
            if dv == self._data_version and not force:
                return []
            versions = self._store.versions()
            changed = self._load_changed(state, versions, self._versions)
            self._data_version, self._versions = dv, versions
            return changed

    def _load_changed(
        self, state: OperatorState, versions: dict[str, int], old: dict[str, int]
    ) -> list[str]:
        store = self._store
        changed: list[str] = []
        if versions["keys"] != old.get("keys"):
            state.keys = self._keys()
            changed.append("keys")
        if versions["clients"] != old.get("clients"):
            state.clients = self._clients()
            changed.append("clients")
        if versions["sites"] != old.get("sites"):
            state.sites = self._sites()
            changed.append("sites")
        if versions["delegations"] != old.get("delegations"):
            state.delegations = frozenset(store.delegations())
            changed.append("delegations")
        if versions["keypairs"] != old.get("keypairs"):
            state.keypairs = self._keypairs()
            changed.append("keypairs")
        # Salts after keys, clients and the rest, which do not wait for them; before the
        # opt-outs, which the streams then send under the new salts.
        if versions["salts"] != old.get("salts"):
            salts = SaltSet.from_blobs(store.load_salt_blobs())

            def read_optouts() -> None:
                rows = store.optouts_after(state.optouts.synced_seq)
                if rows and state.optouts.add_synced(rows) and "optouts" not in changed:
                    changed.append("optouts")

            switch = state.optouts.prepare_salts(salts, between=read_optouts)
            with state.optouts.cond:
                state.salts = salts
                state.optouts.apply_salts(switch)
            changed.append("salts")
        rows = store.optouts_after(state.optouts.synced_seq)
        if rows and state.optouts.add_synced(rows) and "optouts" not in changed:
            changed.append("optouts")
        return changed


class Syncer:
    """A daemon thread that calls `StateLoader.sync` every `interval_s` until stopped."""

    def __init__(
        self, loader: StateLoader, state: OperatorState, interval_s: float, clock: Clock
    ) -> None:
        self._loader = loader
        self._clock = clock
        self._state = state
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator-sync", daemon=True)
        # For /metrics: a sync that keeps failing leaves this process serving old state (other
        # processes' opt-outs, clients and keys unseen) with no error on any call.
        self.last_ok_ms = clock.now_ms()
        self.failures = 0

    def start(self) -> Syncer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                changed = self._loader.sync(self._state)
            except StoreLost:  # said once, by the store's watch; sync_age_seconds grows
                self.failures += 1
                continue
            except Exception as exc:  # keep serving from the last good snapshot
                self.failures += 1
                _log.warning("sync_failed", error_type=type(exc).__name__)
                continue
            self.last_ok_ms, self.failures = self._clock.now_ms(), 0
            if changed:
                _log.info("state_synced", changed=changed)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


__all__ = [
    "Client",
    "KeySnapshot",
    "Keypair",
    "OperatorState",
    "OptOutIndex",
    "Site",
    "StateLoader",
    "Syncer",
    "TestIdentities",
]
