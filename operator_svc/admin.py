"""Administrative writes behind the CLI: init, sites, clients, delegations, sharing, key and salt
rotation.

Each operation is one store transaction, so a failure leaves nothing half-written, and each bumps
the change counter of what it touched, so running servers pick it up within their sync interval.

Entry points (all take an open `OperatorStore`, the time and an rng of `n -> n random bytes`):
`initialise`, `add_site`, `add_client`, `list_clients`, `set_client_disabled`, `grant_delegation`,
`revoke_delegation`, `change_sharing`, `rotate_keys`, `rotate_salts`. `rotate_keys_in` and
`rotate_salts_in` do the same rotations inside a transaction the caller holds (serve's scheduled
rotation checks there that one is still due, domain/rotation.py)."""

from __future__ import annotations

import base64
import math
import secrets
import sqlite3
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from operator_svc.config import (
    DEFAULT_CLOCK_SKEW_S,
    DEFAULT_MAX_SHARING_LIFETIME_S,
    MAX_SYNC_INTERVAL_S,
    check_clock_skew,
    check_lifetimes,
)
from operator_svc.config import (
    # A key's life unless a rotation shortens it. config.py's, where the limits of serve's
    # rotation schedule derive from it; re-exported, as it has always been named here too.
    KEY_LIFETIME_S as KEY_LIFETIME_S,
)
from operator_svc.domain.api_keys import api_key_prefix, hash_api_key
from operator_svc.store import (
    ClientRow,
    KeypairRow,
    KeysetRow,
    OperatorStore,
    SiteRow,
    StoreError,
)
from operator_svc.store.sqlite_store import SCHEMA_VERSION, schema_problem
from svc_common.names import account_name, check_app_name, site_domain
from svc_common.sensitive import shown
from uid2_crypto.client_side import ServerKeypair
from uid2_crypto.keys import FALLBACK_SITE_ID, MASTER_KEYSET_ID, MAX_SITE_ID, REFRESH_KEYSET_ID
from uid2_crypto.salts import BUCKET_COUNT, SaltSet

Rng = Callable[[int], bytes]

ROLES = ("GENERATOR", "MAPPER", "ID_READER", "SHARER", "OPTOUT", "ADMIN")
DEFAULT_ACTIVATION_DELAY_S = 3600
# A key announced years ahead is a typo, not a plan (and must fit SQLite's int64).
MAX_ACTIVATION_DELAY_S = 365 * 86_400
# Every serve process on the data dir must hold a new key before any of them uses it: a refresh
# token under a key another process has not loaded yet would be INVALID_TOKEN there (final).
MIN_ACTIVATION_DELAY_S = math.ceil(2 * MAX_SYNC_INTERVAL_S)
FALLBACK_KEYSET_ID = 2
FIRST_SITE_KEYSET_ID = 3


class AdminError(ValueError):
    """A mistake in an administrative request; the message is one line for stderr."""


@dataclass(frozen=True)
class NewClient:
    name: str
    site_id: int
    roles: tuple[str, ...]
    # Printed once by `client add` (as_json), never in a repr.
    api_key: str = field(repr=False)
    secret: str = field(repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "site_id": self.site_id,
            "roles": list(self.roles),
            "api_key": self.api_key,
            "secret": self.secret,
        }


def parse_roles(text: str) -> tuple[str, ...]:
    roles: list[str] = []
    for part in text.split(","):
        role = part.strip().upper()
        if role not in ROLES:
            raise AdminError(f"unknown role {shown(part.strip())}; roles are {', '.join(ROLES)}")
        if role not in roles:
            roles.append(role)
    if not roles:
        raise AdminError("at least one role is needed")
    return tuple(roles)


def new_name(what: str, text: str) -> str:
    """A new client's or site's name, as the SSP's accounts: what `client list`, `site list`
    and messages print, so printable, at most 64 characters, and not DII or a key
    (svc_common.names.account_name), NFKC-normalised."""
    if not text.strip():
        raise AdminError(f"{what} name must not be empty")
    try:
        return account_name(text)
    except ValueError as exc:
        raise AdminError(f"{what} name: {exc}") from None


def name_of(text: str) -> str:
    """A name as `new_name` stores it, unchecked."""
    return unicodedata.normalize("NFKC", text).strip()


def _client_name_in(conn: sqlite3.Connection, text: str) -> str | None:
    """The stored client name `text` gives: as `new_name` stores it, or as typed (stripped),
    the way names were stored before they were normalised and checked; None for neither."""
    for candidate in dict.fromkeys((name_of(text), text.strip())):
        if OperatorStore.client_name_exists(conn, candidate):
            return candidate
    return None


def check_site_id(site_id: int) -> int:
    if not 1 <= site_id <= MAX_SITE_ID:
        raise AdminError(f"site id must be within 1 and {MAX_SITE_ID}")
    if site_id == FALLBACK_SITE_ID:
        # Its keyset encrypts the tokens of every site without a key of its own: a client
        # there (a SHARER, say) would be given those sites' keys.
        raise AdminError(
            f"site id {FALLBACK_SITE_ID} is the operator's own fallback site (init makes it):"
            " give the site another id"
        )
    return site_id


def _add_key(
    conn: sqlite3.Connection, keyset_id: int, site_id: int, now_s: int, activates_s: int, rng: Rng
) -> int:
    return OperatorStore.insert_key(
        conn,
        keyset_id=keyset_id,
        site_id=site_id,
        created_s=now_s,
        activates_s=activates_s,
        expires_s=activates_s + KEY_LIFETIME_S,
        secret=rng(32),
    )


def initialise(store: OperatorStore, now_ms: int, rng: Rng, identity_scope: str = "UID2") -> bool:
    """Creates the first-level salt, 2^20 salt buckets and the master, refresh and fallback
    keysets with keys active now. Returns False (and changes nothing) when already done;
    AdminError for a store of another schema version (a newer release's, after a downgrade),
    which `serve` would refuse: "already done" would tell a deploy script all is well."""
    if store.is_initialised():
        return False
    held = store.meta_int("schema_version")
    if held:
        raise AdminError(f"the store {schema_problem(held)}")
    salts = SaltSet.generate(BUCKET_COUNT, rng, now_ms)
    blobs = salts.to_blobs()
    now_s = now_ms // 1000
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM meta WHERE k = 'schema_version'").fetchone():
            return False
        first_level_salt = base64.b64encode(rng(32)).decode("ascii")
        OperatorStore.set_meta(conn, "first_level_salt", first_level_salt)
        OperatorStore.set_meta(conn, "identity_scope", identity_scope)
        OperatorStore.write_salt_blobs(conn, blobs)
        for keyset_id, site_id, name in (
            (MASTER_KEYSET_ID, -1, "master"),
            (REFRESH_KEYSET_ID, -2, "refresh"),
            (FALLBACK_KEYSET_ID, FALLBACK_SITE_ID, "fallback"),
        ):
            OperatorStore.insert_keyset(
                conn,
                KeysetRow(keyset_id, site_id, name, None, True, keyset_id == FALLBACK_KEYSET_ID),
            )
            _add_key(conn, keyset_id, site_id, now_s, now_s, rng)
        OperatorStore.upsert_site(conn, SiteRow(FALLBACK_SITE_ID, "fallback", (), ()))
        OperatorStore.set_meta(conn, "schema_version", SCHEMA_VERSION)
    return True


def _ensure_site(conn: sqlite3.Connection, site_id: int, name: str, now_s: int, rng: Rng) -> None:
    """Creates the site's default keyset (with a key active now) if it has none."""
    if OperatorStore.default_keyset_of(conn, site_id) is not None:
        return
    keyset_id = OperatorStore.next_keyset_id(conn, FIRST_SITE_KEYSET_ID)
    OperatorStore.insert_keyset(conn, KeysetRow(keyset_id, site_id, name, None, True, True))
    _add_key(conn, keyset_id, site_id, now_s, now_s, rng)


def add_site(
    store: OperatorStore,
    site_id: int,
    name: str,
    domains: Sequence[str],
    app_names: Sequence[str],
    now_ms: int,
    rng: Rng,
) -> SiteRow:
    """Creates or updates a site (name, domains, app names) and its default keyset."""
    check_site_id(site_id)
    name = new_name("site", name)
    try:
        clean_domains = tuple(dict.fromkeys(site_domain(d) for d in domains))
        clean_apps = tuple(dict.fromkeys(check_app_name(a) for a in app_names))
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    site = SiteRow(site_id, name, clean_domains, clean_apps)
    with store.transaction() as conn:
        OperatorStore.upsert_site(conn, site)
        _ensure_site(conn, site_id, site.name, now_ms // 1000, rng)
    return site


def add_client(
    store: OperatorStore,
    *,
    site_id: int,
    name: str,
    roles: Sequence[str],
    now_ms: int,
    rng: Rng,
    deliver: Callable[[NewClient], None] | None = None,
) -> NewClient:
    """Creates an API client (and its site, if new). The API key is returned once and stored
    only as a salted hash; `UID2-C-<key_id>-...` lets the server find the row in O(1).
    `deliver` (the CLI's print) runs before the commit: a key nobody could be shown (stdout
    full or closed) is not kept, live and unknown to anyone."""
    check_site_id(site_id)
    typed = name
    role_tuple = parse_roles(",".join(roles))
    secret = base64.b64encode(rng(32)).decode("ascii")
    prefix = api_key_prefix(identity_scope(store))
    with store.transaction() as conn:
        # A new key under a name stored before names were checked keeps that name (its
        # delegations and `client disable --name` go by it); any other name must pass.
        name = _client_name_in(conn, typed) or new_name("client", typed)
        # A name is a participant: several keys may share it (key rotation), all on one site,
        # so that `client disable --name` and a delegation to that name mean one participant.
        other_sites = OperatorStore.client_name_sites(conn, name) - {site_id}
        if other_sites:
            raise AdminError(
                f"client name {name!r} already belongs to site {min(other_sites)}; "
                "a name is one participant on one site"
            )
        if not OperatorStore.site_exists(conn, site_id):
            OperatorStore.upsert_site(conn, SiteRow(site_id, name, (), ()))
        _ensure_site(conn, site_id, name, now_ms // 1000, rng)
        for _ in range(5):
            key_id = rng(6).hex()
            api_key = f"{prefix}{key_id}-{base64.urlsafe_b64encode(rng(32)).decode().rstrip('=')}"
            salt = rng(16)
            row = ClientRow(
                client_id=0,
                key_id=key_id,
                name=name,
                site_id=site_id,
                roles=role_tuple,
                key_salt=salt,
                key_hash=hash_api_key(salt, api_key),
                secret=secret,
                disabled=False,
                created_ms=now_ms,
            )
            try:
                OperatorStore.insert_client(conn, row)
            except sqlite3.IntegrityError:
                continue
            new = NewClient(name, site_id, role_tuple, api_key, secret)
            if deliver is not None:
                deliver(new)
            return new
    raise StoreError("could not allocate a unique API key id")


def list_clients(store: OperatorStore) -> list[dict[str, Any]]:
    """Clients without their secrets: name, site, roles, key id, disabled."""
    return [
        {
            "name": c.name,
            "site_id": c.site_id,
            "roles": list(c.roles),
            "key_id": c.key_id,
            "disabled": c.disabled,
            "created": c.created_ms,
        }
        for c in store.clients()
    ]


def set_client_disabled(
    store: OperatorStore, *, name: str | None, key_id: str | None, disabled: bool
) -> int:
    if (name is None) == (key_id is None):
        raise AdminError("name exactly one of --name or --key-id")
    with store.transaction() as conn:
        if name is not None:
            name = _client_name_in(conn, name) or name_of(name)
        n = OperatorStore.set_clients_disabled(conn, name=name, key_id=key_id, disabled=disabled)
        if n == 0:
            raise AdminError("no such client")
    return n


def grant_delegation(store: OperatorStore, site_id: int, client_name: str, now_ms: int) -> None:
    """Site `site_id` lets the client(s) named `client_name` generate tokens on its behalf."""
    check_site_id(site_id)
    with store.transaction() as conn:
        if not OperatorStore.site_exists(conn, site_id):
            raise AdminError(f"no site {site_id}; add it with `uid2-operator site add`")
        stored = _client_name_in(conn, client_name)
        if stored is None:
            raise AdminError("no client with that name")
        OperatorStore.grant(conn, site_id, stored, now_ms)


def revoke_delegation(store: OperatorStore, site_id: int, client_name: str) -> None:
    check_site_id(site_id)
    with store.transaction() as conn:
        # The stored client's name; should the client be gone (its delegation not), the
        # first form that names a delegation, never two clients' at once.
        stored = _client_name_in(conn, client_name)
        forms = (
            (stored,)
            if stored
            else tuple(dict.fromkeys((name_of(client_name), client_name.strip())))
        )
        if not any(OperatorStore.revoke(conn, site_id, form) for form in forms):
            raise AdminError("no such delegation")


@dataclass(frozen=True)
class Sharing:
    """Who besides site `site_id` may decrypt its tokens: None, every ID_READER (the default);
    else exactly the sites listed, whatever their role (reference §5, as the official
    operator: a list, even an empty one, leaves out every ID_READER it does not name)."""

    site_id: int
    allowed_sites: tuple[int, ...] | None

    def as_json(self) -> dict[str, Any]:
        listed = None if self.allowed_sites is None else list(self.allowed_sites)
        return {"site_id": self.site_id, "allowed_sites": listed}


def change_sharing(
    store: OperatorStore,
    site_id: int,
    *,
    allow: Sequence[int] = (),
    revoke: Sequence[int] = (),
    open_to_readers: bool = False,
) -> Sharing:
    """Adds `allow` to, or takes `revoke` from, the allowed-sites list of the site's default
    keyset (`open_to_readers`: removes the list). Sites to add must exist; a site is never on
    its own list, as it always has its keys."""
    check_site_id(site_id)
    for other in (*allow, *revoke):
        if other == FALLBACK_SITE_ID:
            raise AdminError(f"site {other} is the operator's own fallback site, no participant")
        check_site_id(other)
        if other == site_id:
            raise AdminError(f"site {site_id} always decrypts its own tokens; name another site")
    with store.transaction() as conn:
        keyset_id = OperatorStore.default_keyset_of(conn, site_id)
        if keyset_id is None:
            raise AdminError(f"no site {site_id}; add it with `uid2-operator site add`")
        missing = [other for other in allow if not OperatorStore.site_exists(conn, other)]
        if missing:
            raise AdminError(
                f"no site {missing[0]}; add it with `uid2-operator site add` or `client add`"
            )
        (keyset,) = [k for k in OperatorStore.keysets_in(conn) if k.keyset_id == keyset_id]
        if revoke and keyset.allowed_sites is None:
            # Taking a site off no list would start an empty one, which every ID_READER is
            # left out of: all of the site's bid-stream tokens lost, where one site was meant.
            raise AdminError(
                f"site {site_id} has no list: every ID_READER decrypts its tokens, and no "
                "SHARER; `sharing allow` starts a list"
            )
        if open_to_readers:
            allowed: tuple[int, ...] | None = None
        else:
            listed = set(keyset.allowed_sites or ()) | set(allow)
            allowed = tuple(sorted(listed - set(revoke)))
        if allowed != keyset.allowed_sites:
            OperatorStore.set_allowed_sites(conn, keyset_id, allowed)
    return Sharing(site_id, allowed)


def list_sharing(store: OperatorStore) -> list[Sharing]:
    """Every site's sharing, by site id (the master, refresh and fallback keysets aside)."""
    return [
        Sharing(k.site_id, k.allowed_sites)
        for k in sorted(store.keysets(), key=lambda k: k.site_id)
        if k.is_default and k.keyset_id >= FIRST_SITE_KEYSET_ID
    ]


@dataclass(frozen=True)
class RotationReport:
    created: int
    pruned: int
    activates: int

    def as_json(self) -> dict[str, int]:
        return {"created": self.created, "pruned": self.pruned, "activates": self.activates}


def rotate_keys(
    store: OperatorStore,
    *,
    now_ms: int,
    rng: Rng,
    activation_delay_s: int = DEFAULT_ACTIVATION_DELAY_S,
    token_lifetime_s: int = 3 * 86_400,
    refresh_lifetime_s: int = 30 * 86_400,
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
    accepted_lifetime_s: int = DEFAULT_MAX_SHARING_LIFETIME_S,
) -> RotationReport:
    """Adds to every enabled keyset a key activating `activation_delay_s` from now, so
    decryptors have it before its first use. Each key it supersedes keeps being published
    until every token it may have encrypted has expired (successor's activation + the longest
    lifetime of what it encrypts + clock skew); keys past that are pruned. What a master or
    site key encrypts lives the longest of the token lifetime and `accepted_lifetime_s` (a
    sharer's token, 30 days; a bid-stream token, serve's --max-bidstream-lifetime)."""
    # Before the transaction: a mistake must not wait for another process's write lock.
    _check_key_rotation(activation_delay_s, token_lifetime_s, refresh_lifetime_s, clock_skew_s)
    with store.transaction() as conn:
        return rotate_keys_in(
            conn,
            now_ms=now_ms,
            rng=rng,
            activation_delay_s=activation_delay_s,
            token_lifetime_s=token_lifetime_s,
            refresh_lifetime_s=refresh_lifetime_s,
            clock_skew_s=clock_skew_s,
            accepted_lifetime_s=accepted_lifetime_s,
        )


def _check_key_rotation(
    activation_delay_s: int, token_lifetime_s: int, refresh_lifetime_s: int, clock_skew_s: int
) -> None:
    if not MIN_ACTIVATION_DELAY_S <= activation_delay_s <= MAX_ACTIVATION_DELAY_S:
        raise AdminError(
            f"activation delay must be within {MIN_ACTIVATION_DELAY_S} (so every operator "
            f"process has the key before it is used) and {MAX_ACTIVATION_DELAY_S} seconds"
        )
    check_lifetimes(token_lifetime_s, refresh_lifetime_s)
    check_clock_skew(clock_skew_s)


def rotate_keys_in(
    conn: sqlite3.Connection,
    *,
    now_ms: int,
    rng: Rng,
    activation_delay_s: int = DEFAULT_ACTIVATION_DELAY_S,
    token_lifetime_s: int = 3 * 86_400,
    refresh_lifetime_s: int = 30 * 86_400,
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
    accepted_lifetime_s: int = DEFAULT_MAX_SHARING_LIFETIME_S,
) -> RotationReport:
    """`rotate_keys` inside the caller's write transaction (`store.transaction()`)."""
    _check_key_rotation(activation_delay_s, token_lifetime_s, refresh_lifetime_s, clock_skew_s)
    now_s = now_ms // 1000
    activates = now_s + activation_delay_s
    created = 0
    longest_issued_s = OperatorStore.longest_token_lifetime_in(conn)
    longest_refresh_issued_s = OperatorStore.longest_refresh_lifetime_in(conn)
    keys = OperatorStore.keys_in(conn)
    for ks in OperatorStore.keysets_in(conn):
        if not ks.enabled:
            continue
        # A refresh key encrypts refresh tokens only; a master or site key, advertising tokens
        # and sharers' tokens, which are accepted for longer than they are refreshed for. Each
        # also as long as a serve ever issued its tokens for (recorded at its start), should
        # that be longer than today's settings.
        retention = (
            max(refresh_lifetime_s, longest_refresh_issued_s)
            if ks.keyset_id == REFRESH_KEYSET_ID
            else max(token_lifetime_s, accepted_lifetime_s, longest_issued_s)
        ) + clock_skew_s
        keep_until = activates + retention
        superseded = [k for k in keys if k.keyset_id == ks.keyset_id and k.activates_s < activates]
        # The key in use until the new one activates encrypts tokens until then: it is kept
        # a whole token lifetime past that, even when it was to expire sooner (else tokens it
        # encrypts in its last days would be cut short to its expiry, `tokens._last_ms`).
        in_use = max(superseded, key=lambda k: (k.activates_s, k.key_id), default=None)
        for k in superseded:
            if k.expires_s > keep_until or (k is in_use and now_s < k.expires_s < keep_until):
                OperatorStore.set_key_expiry(conn, k.key_id, keep_until)
        _add_key(conn, ks.keyset_id, ks.site_id, now_s, activates, rng)
        created += 1
    expired = [k.key_id for k in OperatorStore.keys_in(conn) if k.expires_s <= now_s]
    pruned = OperatorStore.delete_keys(conn, expired)
    return RotationReport(created, pruned, activates)


_SUBSCRIPTION_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
SUBSCRIPTION_ID_LENGTH = 10


def _subscription_id(rng: Rng) -> str:
    """Ten letters and digits, as the official operator's subscription ids (no modulo bias:
    bytes of 248 and above, not a multiple of 62, are drawn again)."""
    out: list[str] = []
    while len(out) < SUBSCRIPTION_ID_LENGTH:
        for b in rng(SUBSCRIPTION_ID_LENGTH):
            if b < 248 and len(out) < SUBSCRIPTION_ID_LENGTH:
                out.append(_SUBSCRIPTION_ALPHABET[b % 62])
    return "".join(out)


def identity_scope(store: OperatorStore) -> str:
    """UID2 or EUID: what the store was initialised for, for good."""
    return (store.meta("identity_scope") or b"UID2").decode()


def add_keypair(store: OperatorStore, site_id: int, now_ms: int, rng: Rng) -> dict[str, Any]:
    """A client-side token generation subscription for an existing site: what its pages need
    (subscription id and public key); the private key stays in the store."""
    check_site_id(site_id)
    keypair = ServerKeypair.generate(rng)
    scope = identity_scope(store)
    with store.transaction() as conn:
        if not OperatorStore.site_exists(conn, site_id):
            raise AdminError(
                f"no site {site_id}; add it with `uid2-operator site add --domain ...` first "
                "(client-side generation is allowed only from the site's domains and apps)"
            )
        for _ in range(5):
            row = KeypairRow(_subscription_id(rng), site_id, keypair.private_der(), False, now_ms)
            try:
                OperatorStore.insert_keypair(conn, row)
            except sqlite3.IntegrityError:
                continue
            return {
                "subscription_id": row.subscription_id,
                "public_key": keypair.public_key_text(scope),
                "site_id": site_id,
            }
    raise StoreError("could not allocate a unique subscription id")


def site_has_places(store: OperatorStore, site_id: int) -> bool:
    """Whether the site lists a domain or an app name: without one, every client-side request
    for it is refused."""
    return any(s.domains or s.app_names for s in store.sites() if s.site_id == site_id)


def list_keypairs(store: OperatorStore) -> list[dict[str, Any]]:
    """Subscriptions with their public keys (never the private ones)."""
    scope = identity_scope(store)
    return [
        {
            "subscription_id": r.subscription_id,
            "site_id": r.site_id,
            "public_key": ServerKeypair.from_der(r.private_key).public_key_text(scope),
            "disabled": r.disabled,
            "created": r.created_ms,
        }
        for r in store.keypairs()
    ]


def set_keypair_disabled(store: OperatorStore, subscription_id: str, disabled: bool) -> None:
    with store.transaction() as conn:
        if OperatorStore.set_keypair_disabled(conn, subscription_id, disabled) == 0:
            raise AdminError("no such subscription id")


def rotate_salts(store: OperatorStore, fraction: float, now_ms: int, rng: Rng) -> int:
    """Rotates `fraction` of the salt buckets, those due soonest first; returns how many."""
    _check_fraction(fraction)
    prepared = prepare_salt_rotation(store, fraction, now_ms, rng)
    with store.transaction() as conn:
        return rotate_salts_in(conn, fraction, now_ms, rng, prepared=prepared)


@dataclass(frozen=True)
class PreparedSalts:
    """A salt rotation computed before the write transaction (`prepare_salt_rotation`), from
    the salts at `version`."""

    version: int
    blobs: dict[str, bytes]
    rotated: int


def prepare_salt_rotation(
    store: OperatorStore, fraction: float, now_ms: int, rng: Rng, *, at_least_one: bool = False
) -> PreparedSalts:
    """Computes a rotation outside the write lock: reading, rotating and serialising 2^20
    buckets under it held every opt-out write back 1.5-3 s. `rotate_salts_in` writes it if
    the salts are still at its version."""
    version, blobs = store.salt_blobs_with_version()
    salts = SaltSet.from_blobs(blobs)
    fraction = _effective_fraction(fraction, len(salts), at_least_one)
    min_age_ms = salt_min_age_ms(store.longest_token_lifetime())
    rotated, count = salts.rotate_counted(fraction, rng, now_ms, min_age_ms=min_age_ms)
    return PreparedSalts(version, rotated.to_blobs(), count)


def salt_min_age_ms(longest_issued_s: int) -> int:
    """How long a bucket must keep its salt before it rotates again: while a token issued
    under the salt before it may be live (a sharer's is accepted for 30 days; every token at
    least as long as any serve of the store issued them for), plus the clock skew. The opt-out
    index publishes an opt-out under a bucket's current and previous salt only."""
    return (max(longest_issued_s, DEFAULT_MAX_SHARING_LIFETIME_S) + DEFAULT_CLOCK_SKEW_S) * 1000


def rotate_salts_in(
    conn: sqlite3.Connection,
    fraction: float,
    now_ms: int,
    rng: Rng,
    *,
    at_least_one: bool = False,
    prepared: PreparedSalts | None = None,
) -> int:
    """`rotate_salts` inside the caller's write transaction. Records the time with the salts,
    so that serve's daily rotation counts its next day from any rotation, its own, another
    serve process's or this command's. `at_least_one`: a fraction too small to round to one
    bucket rotates one (serve's daily rotation: rewriting every bucket under the write lock
    to rotate none would be all cost). `prepared`: written as it is if the salts are still the
    ones it was computed from; else (another rotation committed since) the rotation is done
    again here, from the salts read inside the transaction, so that two at once each rotate
    what the other left instead of the second overwriting the first."""
    _check_fraction(fraction)
    if prepared is not None and OperatorStore.salts_version_in(conn) == prepared.version:
        blobs, rotated = prepared.blobs, prepared.rotated
    else:
        salts = SaltSet.from_blobs(OperatorStore.read_salt_blobs(conn))
        fraction = _effective_fraction(fraction, len(salts), at_least_one)
        min_age_ms = salt_min_age_ms(OperatorStore.longest_token_lifetime_in(conn))
        new, rotated = salts.rotate_counted(fraction, rng, now_ms, min_age_ms=min_age_ms)
        blobs = new.to_blobs()
    OperatorStore.write_salt_blobs(conn, blobs)
    OperatorStore.set_salts_rotated_ms(conn, now_ms)
    return rotated


def _effective_fraction(fraction: float, buckets: int, at_least_one: bool) -> float:
    return max(fraction, 1 / buckets) if at_least_one and buckets else fraction


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise AdminError("fraction must be within (0, 1]")


def default_rng(n: int) -> bytes:
    return secrets.token_bytes(n)
