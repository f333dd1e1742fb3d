"""`uid2-operator`: create the store, administer sites, clients, delegations, sharing,
client-side key pairs, keys and salts, and serve gRPC. Every mistake prints one line on stderr
and exits 2, with nothing half-written (each command is one transaction)."""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from operator_svc import admin
from operator_svc.config import (
    DAY_S,
    DEFAULT_CLOCK_SKEW_S,
    DEFAULT_MAX_SHARING_LIFETIME_S,
    HOUR_S,
    MAX_LIFETIME_S,
    MAX_ROTATE_KEYS_EVERY_S,
    MAX_SYNC_INTERVAL_S,
    MIN_ROTATE_KEYS_EVERY_S,
    MIN_SYNC_INTERVAL_S,
    ConfigError,
    OperatorConfig,
    rotate_keys_every_problem,
    salts_fraction_problem,
)
from operator_svc.store import OperatorStore, SiteRow, StoreError
from operator_svc.store.sqlite_store import DB_FILE, check_schema
from svc_common import store_backup
from svc_common.cli_common import (
    FlagsWithEnv,
    NewKeyPrinter,
    OneLineParser,
    UsageError,
    add_metrics_flag,
    add_tls_flags,
    fail,
    metrics_settings,
    os_error_text,
    print_json,
    server_tls,
    server_tls_fields,
    show_variables,
    typed,
    warn_unknown_variables,
)
from svc_common.errors import ServiceError
from svc_common.sensitive import shown
from svc_common.settings import (
    SettingError,
    finite_float,
    host_port,
    integer,
    integer_in,
    log_level,
    number_in,
)
from svc_common.stop_signals import close_despite_stop

PROG = "uid2-operator"
# gRPC's customary port, as in the README; 8080 is where the README puts the HTTP API.
DEFAULT_LISTEN = "127.0.0.1:50051"
ENV = "UID2_OPERATOR_"


# The variables whose names are not ENV + the flag's: seconds say so in their names.
_ENV_NAMES = {
    flag: ENV + flag.upper().replace("-", "_") + "_S"
    for flag in (
        "token-lifetime",
        "refresh-lifetime",
        "refresh-from",
        "max-bidstream-lifetime",
        "allow-clock-skew",
        "sync-interval",
        "rotate-keys-every",
    )
}


def settings_of(args: argparse.Namespace) -> FlagsWithEnv:
    return FlagsWithEnv(args, ENV, _ENV_NAMES)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_DATA_DIR_HELP = "directory holding the operator store (env UID2_OPERATOR_DATA_DIR)"


def _data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help=_DATA_DIR_HELP)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="The UID2 Operator.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create the store (salts, keysets, keys) if absent")
    _data_dir(p)
    p.add_argument("--identity-scope", help="UID2 or EUID (env UID2_OPERATOR_IDENTITY_SCOPE)")

    store_backup.add_commands(sub, "operator", _DATA_DIR_HELP)

    site = sub.add_parser("site", help="manage sites").add_subparsers(dest="action", required=True)
    p = site.add_parser(
        "add",
        help="add or update a site and its default keyset",
        description="Adds the site, or updates an existing one: its name, domains and app names "
        "become the ones given here (list every domain and app the site keeps).",
    )
    _data_dir(p)
    p.add_argument("--site-id", type=typed(integer), required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--domain", action="append", default=[], help="repeatable; replaces the list")
    p.add_argument("--app-name", action="append", default=[], help="repeatable; replaces the list")
    p = site.add_parser("list", help="list sites with their domains and app names")
    _data_dir(p)

    client = sub.add_parser("client", help="manage API clients").add_subparsers(
        dest="action", required=True
    )
    p = client.add_parser("add", help="create an API client; prints its key once")
    _data_dir(p)
    p.add_argument("--site-id", type=typed(integer), required=True)
    p.add_argument("--name", required=True)
    # Repeatable too: `--roles GENERATOR --roles MAPPER` grants both, where argparse's plain
    # option would silently keep the last.
    p.add_argument(
        "--roles",
        required=True,
        action="append",
        help="comma-separated, repeatable: " + ",".join(admin.ROLES),
    )
    p = client.add_parser("list", help="list clients (never their keys)")
    _data_dir(p)
    for action in ("disable", "enable"):
        p = client.add_parser(action, help=f"{action} clients by name or key id")
        _data_dir(p)
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--name")
        g.add_argument("--key-id")

    deleg = sub.add_parser("delegation", help="on-behalf-of grants").add_subparsers(
        dest="action", required=True
    )
    for action in ("grant", "revoke"):
        p = deleg.add_parser(action, help=f"{action} generation on behalf of a site")
        _data_dir(p)
        p.add_argument("--site-id", type=typed(integer), required=True)
        p.add_argument("--client-name", required=True)

    sharing = sub.add_parser(
        "sharing",
        help="which sites may decrypt a site's tokens",
        description="A site's tokens are decrypted, besides by the site itself, by every "
        "ID_READER (SSPs, DSPs) until the site lists the sites it shares with; from then on "
        "by exactly those sites, whatever their role (SHARER or ID_READER), as the official "
        "operator does: `allow` starts a list, `open` removes it.",
    ).add_subparsers(dest="action", required=True)
    for action, what in (("allow", "add sites to"), ("revoke", "take sites off")):
        p = sharing.add_parser(action, help=f"{what} the list of a site's token decrypters")
        _data_dir(p)
        p.add_argument("--site-id", type=typed(integer), required=True)
        p.add_argument(
            "--with-site-id",
            type=typed(integer),
            action="append",
            required=True,
            help="repeatable",
        )
    p = sharing.add_parser("open", help="remove a site's list: every ID_READER decrypts again")
    _data_dir(p)
    p.add_argument("--site-id", type=typed(integer), required=True)
    p = sharing.add_parser("list", help="every site's list (null: every ID_READER)")
    _data_dir(p)

    pairs = sub.add_parser(
        "keypair", help="client-side token generation (CSTG) subscriptions"
    ).add_subparsers(dest="action", required=True)
    p = pairs.add_parser(
        "add",
        help="a subscription id and public key for a site's pages (Prebid.js, the UID2 SDKs)",
        description="Creates a client-side token generation key pair for an existing site and "
        "prints its subscription id and public key. Pages call /v2/token/client-generate on the "
        "HTTP API (serve --http-listen); it answers only pages on the site's domains, and apps "
        "with its app names (site add --domain/--app-name).",
    )
    _data_dir(p)
    p.add_argument("--site-id", type=typed(integer), required=True)
    p = pairs.add_parser("list", help="list subscriptions and public keys")
    _data_dir(p)
    for action in ("disable", "enable"):
        p = pairs.add_parser(action, help=f"{action} a subscription")
        _data_dir(p)
        p.add_argument("--subscription-id", required=True)

    keys = sub.add_parser("keys", help="encryption keys").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser("rotate", help="add keys that activate later; prune expired ones")
    _data_dir(p)
    p.add_argument(
        "--activation-delay",
        type=typed(integer),
        default=admin.DEFAULT_ACTIVATION_DELAY_S,
        metavar="SECONDS",
        help=f"when the new keys start being used (default {admin.DEFAULT_ACTIVATION_DELAY_S}, "
        f"at least {admin.MIN_ACTIVATION_DELAY_S})",
    )
    # The same settings (and variables) as `serve`'s: they decide how long old keys are kept.
    lifetimes = ("--token-lifetime", "--refresh-lifetime", "--max-bidstream-lifetime")
    _seconds(p, *lifetimes, "--allow-clock-skew")
    show_variables(p, settings_of(argparse.Namespace()), _ENV_NAMES)

    salts = sub.add_parser("salts", help="salt buckets").add_subparsers(
        dest="action", required=True
    )
    p = salts.add_parser("rotate", help="rotate a fraction of the buckets, oldest first")
    _data_dir(p)
    p.add_argument("--fraction", type=typed(finite_float), required=True)

    p = sub.add_parser("serve", help="serve gRPC until SIGINT/SIGTERM")
    _data_dir(p)
    p.add_argument("--listen", help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    _seconds(
        p,
        "--token-lifetime",
        "--refresh-lifetime",
        "--refresh-from",
        "--max-bidstream-lifetime",
        "--allow-clock-skew",
    )
    p.add_argument(
        "--sync-interval",
        metavar="SECONDS",
        help="how often other processes' writes are picked up (default 0.1, at most 1)",
    )
    p.add_argument(
        "--http-listen",
        help="also serve the official UID2 HTTP API on HOST:PORT",
    )
    p.add_argument(
        "--rotate-keys-every",
        metavar="SECONDS",
        help="rotate keys as `keys rotate` does, with these lifetimes, once the newest master "
        f"key is this old ({MIN_ROTATE_KEYS_EVERY_S} to {MAX_ROTATE_KEYS_EVERY_S}; default 0: "
        "off)",
    )
    p.add_argument(
        "--rotate-salts-daily-fraction",
        metavar="F",
        help="once a day, rotate this fraction of the salt buckets as `salts rotate` does "
        "(0 < F <= 1; 0.00274 rotates each about yearly; default 0: off)",
    )
    add_tls_flags(p, peers=None)
    add_metrics_flag(p)
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR, CRITICAL")
    show_variables(p, settings_of(argparse.Namespace()))
    return parser


_SECONDS_HELP = {
    "--token-lifetime": f"advertising token lifetime (default {3 * DAY_S})",
    "--refresh-lifetime": f"refresh token lifetime (default {30 * DAY_S})",
    "--refresh-from": f"how long after issue a token is due for refresh (default {HOUR_S})",
    "--max-bidstream-lifetime": "longest a bid-stream token is accepted (default 0: the longest "
    "token lifetime any serve of this data dir has issued tokens with)",
    "--allow-clock-skew": f"clock skew tolerated (default {DEFAULT_CLOCK_SKEW_S})",
}


def _seconds(p: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        p.add_argument(flag, metavar="SECONDS", help=_SECONDS_HELP[flag])


def _require_dir(args: argparse.Namespace) -> Path:
    return Path(settings_of(args).required("data-dir"))


def _existing_dir(args: argparse.Namespace) -> Path:
    directory = _require_dir(args)
    if not directory.exists():
        raise UsageError(f"data dir {directory} does not exist; run `{PROG} init` first")
    return directory


def _open(args: argparse.Namespace) -> OperatorStore:
    return OperatorStore.open(_existing_dir(args))


def _lifetimes(settings: FlagsWithEnv) -> tuple[int, int, int]:
    """Token and refresh-token lifetimes and the clock skew: `serve` and `keys rotate` share
    them (and their variables), since they decide how long old keys are kept."""
    token_s = settings.value("token-lifetime", integer_in(1, MAX_LIFETIME_S), 3 * DAY_S)
    refresh_s = settings.value("refresh-lifetime", integer_in(1, MAX_LIFETIME_S), 30 * DAY_S)
    _at_most(settings, "token-lifetime", token_s, "refresh-lifetime", refresh_s)
    skew_s = settings.value("allow-clock-skew", integer_in(0, MAX_LIFETIME_S), DEFAULT_CLOCK_SKEW_S)
    return token_s, refresh_s, skew_s


def _at_most(settings: FlagsWithEnv, flag: str, value: int, limit_flag: str, limit: int) -> None:
    """Refuses `value` above `limit` as one line naming both settings' flags and variables, as
    a setting out of its own range is named (OperatorConfig's own check names neither), and
    both values, since either may be a default the user never typed."""
    if value > limit:
        raise UsageError(
            f"{settings.spelled(flag)} must not exceed {settings.spelled(limit_flag)} "
            f"({shown(str(value), quoted=False)} s > {shown(str(limit), quoted=False)} s)"
        )


def _bidstream_lifetime(settings: FlagsWithEnv, token_s: int) -> int:
    """--max-bidstream-lifetime: 0 for the token lifetime itself, else at least that. `keys
    rotate` reads it too: old keys stay as long as a bid-stream token they encrypted is
    accepted."""
    bidstream_s = settings.value("max-bidstream-lifetime", integer_in(0, MAX_LIFETIME_S), 0)
    if bidstream_s:
        _at_most(settings, "token-lifetime", token_s, "max-bidstream-lifetime", bidstream_s)
    return bidstream_s


def serve_config(args: argparse.Namespace) -> OperatorConfig:
    settings = settings_of(args)
    token_s, refresh_s, skew_s = _lifetimes(settings)
    refresh_from_s = settings.value("refresh-from", integer_in(1), HOUR_S)
    _at_most(settings, "refresh-from", refresh_from_s, "token-lifetime", token_s)
    bidstream_s = _bidstream_lifetime(settings, token_s)
    return OperatorConfig(
        data_dir=_require_dir(args),
        listen=settings.value("listen", host_port, DEFAULT_LISTEN),
        token_lifetime_s=token_s,
        refresh_lifetime_s=refresh_s,
        refresh_from_s=refresh_from_s,
        max_bidstream_lifetime_s=bidstream_s,
        allow_clock_skew_s=skew_s,
        sync_interval_s=settings.value(
            "sync-interval", number_in(MIN_SYNC_INTERVAL_S, MAX_SYNC_INTERVAL_S, " s"), 0.1
        ),
        http_listen=settings.value("http-listen", host_port, None),
        tls=server_tls(settings),
        rotate_keys_every_s=settings.value("rotate-keys-every", _rotate_keys_every, 0),
        rotate_salts_daily_fraction=settings.value(
            "rotate-salts-daily-fraction", _salts_fraction, 0.0
        ),
    )


N = TypeVar("N", int, float)


def _off_or(parse: Callable[[str], N], problem_of: Callable[[N], str | None]) -> Callable[[str], N]:
    """A schedule setting's parser: 0 is off; anything else must pass `problem_of`."""

    def parsed(text: str) -> N:
        value = parse(text)
        problem = problem_of(value) if value != 0 else None
        if problem:
            raise SettingError(problem)
        return value

    return parsed


_rotate_keys_every = _off_or(integer, rotate_keys_every_problem)
_salts_fraction = _off_or(finite_float, salts_fraction_problem)


def _serve(args: argparse.Namespace) -> int:
    from operator_svc.server import create_server
    from svc_common import metrics
    from svc_common.logging import configure_logging
    from svc_common.stop_signals import catch_stop_signals

    config = serve_config(args)
    level = settings_of(args).value("log-level", log_level, "INFO")
    metrics_at = metrics_settings(settings_of(args), config.tls)
    # Fails before logging and the listener start, as one plain line, on a store `init` did not
    # make usable.
    OperatorStore.open(_existing_dir(args)).close()
    configure_logging(level, service="operator")
    warn_unknown_variables(settings_of(args), _parser())

    started = time.perf_counter()

    def started_fields(served: Any) -> dict[str, int]:
        extra = {} if served.http_port is None else {"http_port": served.http_port}
        return {"startup_ms": round((time.perf_counter() - started) * 1000), **extra}

    stop = catch_stop_signals()  # a stop while state loads still drains and exits 0
    metrics.serve_until_stopped(
        "operator",
        metrics_at,
        stop,
        lambda: create_server(config, stop=stop),
        "uid2_operator_",
        server_tls_fields(config.tls),
        started_fields,
    )
    return 0


def _print(obj: Any) -> None:
    print_json(obj)


def _run(args: argparse.Namespace) -> int:
    rng = admin.default_rng
    cmd = args.command
    if cmd == "serve":
        return _serve(args)
    if cmd in ("backup", "restore"):
        return store_backup.run_command(args, _require_dir(args), DB_FILE, StoreError, check_schema)
    if cmd == "init":
        directory = _require_dir(args)
        settings = settings_of(args)
        asked = settings.value("identity-scope", _identity_scope, None)
        store = OperatorStore.create(directory)
        try:
            created = admin.initialise(store, _now_ms(), rng, asked or "UID2")
            held = admin.identity_scope(store)
        finally:
            close_despite_stop(store.close)
        if asked is not None and held != asked:
            # Running init again changes nothing; a scope asked for and not applied is an error,
            # not a quiet success: tokens would be issued under the other one.
            raise UsageError(
                f"{settings.spelled('identity-scope')} {asked}: the store in {directory} was "
                f"initialised for {held}, which cannot change; use a new data dir"
            )
        _print({"initialised": created, "data_dir": str(directory)})
        return 0
    store = _open(args)
    try:
        if cmd == "site" and args.action == "list":
            for row in store.sites():
                _print(_site_json(row))
        elif cmd == "site":
            site = admin.add_site(
                store, args.site_id, args.name, args.domain, args.app_name, _now_ms(), rng
            )
            _print(_site_json(site))
        elif cmd == "client" and args.action == "add":
            printer = NewKeyPrinter()
            try:
                admin.add_client(
                    store,
                    site_id=args.site_id,
                    name=args.name,
                    roles=args.roles,
                    now_ms=_now_ms(),
                    rng=rng,
                    deliver=lambda new: printer(new.as_json()),
                )
            except (StoreError, ServiceError, sqlite3.Error, OSError) as exc:
                if printer.printed:  # the commit after the print failed
                    raise admin.AdminError(printer.void(exc)) from None
                raise
            except BaseException:  # a stop signal (Ctrl-C, SIGTERM) after the print
                printer.void_on_stderr(PROG)
                raise
        elif cmd == "client" and args.action == "list":
            for c in admin.list_clients(store):
                _print(c)
        elif cmd == "client":
            n = admin.set_client_disabled(
                store, name=args.name, key_id=args.key_id, disabled=args.action == "disable"
            )
            _print({args.action + "d": n})
        elif cmd == "delegation" and args.action == "grant":
            admin.grant_delegation(store, args.site_id, args.client_name, _now_ms())
            _print({"granted": True, "site_id": args.site_id})
        elif cmd == "delegation":
            admin.revoke_delegation(store, args.site_id, args.client_name)
            _print({"revoked": True, "site_id": args.site_id})
        elif cmd == "sharing" and args.action == "list":
            for sharing in admin.list_sharing(store):
                _print(sharing.as_json())
        elif cmd == "sharing":
            _print(
                admin.change_sharing(
                    store,
                    args.site_id,
                    allow=args.with_site_id if args.action == "allow" else (),
                    revoke=args.with_site_id if args.action == "revoke" else (),
                    open_to_readers=args.action == "open",
                ).as_json()
            )
        elif cmd == "keypair" and args.action == "add":
            _print(admin.add_keypair(store, args.site_id, _now_ms(), rng))
            if not admin.site_has_places(store, args.site_id):
                sys.stderr.write(
                    f"{PROG}: note: site {args.site_id} lists no domain or app name yet; its "
                    "pages and apps are refused until `site add --domain/--app-name` lists them\n"
                )
        elif cmd == "keypair" and args.action == "list":
            for pair in admin.list_keypairs(store):
                _print(pair)
        elif cmd == "keypair":
            admin.set_keypair_disabled(
                store, args.subscription_id.strip(), disabled=args.action == "disable"
            )
            _print({args.action + "d": args.subscription_id.strip()})
        elif cmd == "keys":
            token_s, refresh_s, skew_s = _lifetimes(settings_of(args))
            report = admin.rotate_keys(
                store,
                now_ms=_now_ms(),
                rng=rng,
                activation_delay_s=args.activation_delay,
                token_lifetime_s=token_s,
                refresh_lifetime_s=refresh_s,
                clock_skew_s=skew_s,
                accepted_lifetime_s=max(
                    _bidstream_lifetime(settings_of(args), token_s),
                    DEFAULT_MAX_SHARING_LIFETIME_S,
                ),
            )
            _print(report.as_json())
        elif cmd == "salts":
            n = admin.rotate_salts(store, args.fraction, _now_ms(), rng)
            _print({"rotated": n})
        else:  # pragma: no cover - argparse rejects anything else
            raise UsageError(f"unknown command {cmd}")
    finally:
        close_despite_stop(store.close)
    return 0


def _site_json(site: SiteRow) -> dict[str, Any]:
    return {
        "site_id": site.site_id,
        "name": site.name,
        "domains": list(site.domains),
        "app_names": list(site.app_names),
    }


def _identity_scope(text: str) -> str:
    scope = text.strip().upper()
    if scope not in ("UID2", "EUID"):
        raise SettingError(f"must be UID2 or EUID, got {shown(text)}")
    return scope


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return fail(PROG, str(exc))
    if args.command == "serve":
        quiet: Any = contextlib.nullcontext()
    else:
        from svc_common.logging import silenced  # imported late, as serve's logging

        quiet = silenced()
    try:
        with quiet:
            return _run(args)
    # StoreBusy (a ServiceError): another process held the write lock past the busy timeout.
    except (UsageError, ConfigError, admin.AdminError, StoreError, ServiceError) as exc:
        return fail(PROG, str(exc))
    except sqlite3.Error as exc:
        # A valid SQLite file whose tables are not the operator's gets past opening.
        return fail(PROG, f"the store in {_require_dir(args)} cannot be used: {exc}")
    except OSError as exc:
        return fail(PROG, os_error_text(exc))


if __name__ == "__main__":
    sys.exit(main())
