"""`uid2-ssp`: manage publisher / subscriber API keys and serve the SSP.

    uid2-ssp publisher add  [--data-dir DIR] --name NAME (--domain D | --app BUNDLE)...  (>= 1)
    uid2-ssp subscriber add [--data-dir DIR] --name NAME
    uid2-ssp (publisher | subscriber) list [--data-dir DIR]
    uid2-ssp (publisher | subscriber) (disable | enable) [--data-dir DIR] --name NAME
    uid2-ssp (backup --to FILE | restore --from FILE) [--data-dir DIR]
    uid2-ssp serve (--data-dir DIR | --publishers-file FILE) --listen HOST:PORT
                   [--operator HOST:PORT --operator-api-key KEY] [--bidder NAME=HOST:PORT]...
                   [--tmax-ms 150] [--key-refresh-s 3600] [--stream-buffer 1024]

`add` prints the new API key once; `list` prints one JSON object a line, never a key's secret
part or hash; a disabled key is refused by a serving SSP on the same data dir at its next call
(a bid stream it opened before ends within about 1 s).
Every --data-dir falls back to UID2_SSP_DATA_DIR, and every serve flag to an environment
variable UID2_SSP_<FLAG> (UID2_SSP_BIDDERS takes a comma-separated list). Without operator
credentials tokens pass through unchecked."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bidstream.decryptor.key_cache import KEY_REFRESH_SECONDS
from ssp_svc.bidders import BidderTarget
from ssp_svc.config import MAX_STREAM_BUFFER, MAX_TMAX_MS, ConfigError, SspConfig, parse_bidder
from ssp_svc.store.accounts import (
    DB_NAME,
    STORE_TABLES,
    Account,
    AccountKind,
    AccountListing,
    SqliteAccountStore,
    StoreError,
    normalise_inventory,
)
from svc_common import store_backup
from svc_common.cli_common import (
    FlagsWithEnv,
    NewKeyPrinter,
    OneLineParser,
    UsageError,
    add_metrics_flag,
    add_tls_flags,
    both_or_neither,
    fail,
    metrics_settings,
    os_error_text,
    peer_tls,
    peer_tls_fields,
    print_json,
    server_tls,
    server_tls_fields,
    show_variables,
    warn_unknown_variables,
)
from svc_common.clock import SystemClock
from svc_common.logging import configure_logging, silenced
from svc_common.settings import api_key, dial_address, host_port, integer_in, log_level
from svc_common.stop_signals import catch_stop_signals, close_despite_stop

PROG = "uid2-ssp"
_DATA_DIR_HELP = "directory of the SSP's store (env UID2_SSP_DATA_DIR)"


def _parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="UID2 SSP: impressions, auctions, bid stream.")
    sub = p.add_subparsers(dest="command", required=True)

    for noun, kind in (("publisher", "publisher"), ("subscriber", "bid-stream subscriber")):
        group = sub.add_parser(noun, help=f"manage {kind} API keys")
        verbs = group.add_subparsers(dest="verb", required=True)
        add = verbs.add_parser("add", help=f"create a {kind} and print its API key as JSON")
        add.add_argument("--data-dir", help=_DATA_DIR_HELP)
        add.add_argument("--name", required=True)
        if noun == "publisher":
            add.add_argument("--domain", action="append", default=[], help="allowed page domain")
            add.add_argument("--app", action="append", default=[], help="allowed app bundle")
        listing = verbs.add_parser("list", help=f"list {noun}s, one JSON line each (never keys)")
        listing.add_argument("--data-dir", help=_DATA_DIR_HELP)
        for verb, effect in (("disable", "refuse"), ("enable", "accept again")):
            toggle = verbs.add_parser(
                verb, help=f"{effect} a {kind}'s API key; a serving SSP sees it at its next call"
            )
            toggle.add_argument("--data-dir", help=_DATA_DIR_HELP)
            toggle.add_argument("--name", required=True)

    store_backup.add_commands(sub, "SSP", _DATA_DIR_HELP)

    # Each falls back to UID2_SSP_<FLAG> (FlagsWithEnv), --bidder to UID2_SSP_BIDDERS;
    # show_variables names it in the help.
    serve = sub.add_parser("serve", help="serve gRPC until SIGINT/SIGTERM")
    serve.add_argument("--data-dir", help="directory of the SSP's store")
    serve.add_argument(
        "--publishers-file",
        help='JSON accounts file instead of a data dir: {"publishers": [{"name", "api_key", '
        '"domains", "apps"}], "subscribers": [{"name", "api_key"}]}; either list may be left '
        "out, not both, and one account at least must be listed; other keys are refused",
    )
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:0)")
    serve.add_argument("--operator", help="the operator's HOST:PORT")
    # A flag of its own, not a second spelling of --operator: FlagsWithEnv then reads its
    # variable too, and refuses the two giving different addresses (_ALIASES).
    serve.add_argument("--operator-address", help="the same as --operator, as in uid2-publisher")
    serve.add_argument("--operator-api-key", help="ID_READER key")
    serve.add_argument(
        "--bidder", action="append", default=None, metavar="NAME=HOST:PORT",
        help="a BidderService to call (repeatable)",
    )  # fmt: skip
    serve.add_argument("--tmax-ms", help="auction deadline (default 150)")
    serve.add_argument("--key-refresh-s", help="key refresh interval (default 3600)")
    serve.add_argument(
        "--stream-buffer",
        help="bid requests held per bid-stream subscriber "
        f"(default 1024, at most {MAX_STREAM_BUFFER})",
    )
    add_tls_flags(serve, peers="the operator and the bidders")
    add_metrics_flag(serve)
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR, CRITICAL")
    show_variables(serve, settings_of(argparse.Namespace()))
    return p


def _add_account(args: argparse.Namespace, kind: AccountKind, data_dir: Path) -> int:
    name: str = args.name.strip()
    if not name:
        return fail(PROG, "--name must not be empty")
    try:
        domains, apps = normalise_inventory(getattr(args, "domain", []), getattr(args, "app", []))
    except ValueError as exc:
        return fail(PROG, str(exc))
    if kind is AccountKind.PUBLISHER and not domains and not apps:
        # It may sell only inventory it registered, so without any it could sell nothing.
        return fail(PROG, "a publisher needs at least one --domain or --app")

    printer = NewKeyPrinter()

    def deliver(account: Account, api_key: str) -> None:
        out: dict[str, object] = {"name": account.name, "api_key": api_key}
        if kind is AccountKind.PUBLISHER:
            out["domains"] = list(domains)
            out["apps"] = list(apps)
        printer(out)

    try:
        store = SqliteAccountStore(data_dir, rng=os.urandom, clock=SystemClock())
    except StoreError as exc:
        return fail(PROG, str(exc))
    try:
        store.add(name, kind, domains, apps, deliver=deliver)
    except StoreError as exc:
        return fail(PROG, printer.void(exc))
    except BaseException:  # a stop signal (Ctrl-C, SIGTERM) after the print, before the commit
        printer.void_on_stderr(PROG)
        raise
    finally:
        close_despite_stop(store.close)  # after the commit: the key is saved
    return 0


def _open_existing(data_dir: Path) -> SqliteAccountStore:
    # Opening makes a store where there is none: a mistyped --data-dir given to `list` would
    # leave one behind and list nothing, as if the SSP had no accounts.
    if data_dir.is_dir() and not (data_dir / DB_NAME).exists():
        raise StoreError(f"data dir {data_dir} holds no SSP store ({DB_NAME})")
    return SqliteAccountStore(data_dir, rng=os.urandom, clock=SystemClock())


def _list_accounts(kind: AccountKind, data_dir: Path) -> int:
    store = _open_existing(data_dir)
    try:
        listed = store.listing(kind)
    finally:
        close_despite_stop(store.close)
    for entry in listed:
        print_json(_listing_json(entry))
    return 0


def _listing_json(entry: AccountListing) -> dict[str, object]:
    account = entry.account
    out: dict[str, object] = {"name": account.name, "kind": account.kind.value}
    if account.kind is AccountKind.PUBLISHER:
        out["domains"] = list(account.domains)
        out["apps"] = list(account.apps)
    # The key id is the public part of the key (UID2-SSP-<key id>.<secret>), as the operator's
    # `client list` shows its clients' ones: it tells which account a key in hand belongs to.
    out.update(key_id=account.account_id, disabled=entry.disabled, created=entry.created_ms)
    return out


def _set_disabled(args: argparse.Namespace, kind: AccountKind, data_dir: Path) -> int:
    name: str = args.name.strip()
    store = _open_existing(data_dir)
    try:
        store.set_disabled(kind, name, disabled=args.verb == "disable")
    finally:
        close_despite_stop(store.close)
    print_json({"name": name, "kind": kind.value, "disabled": args.verb == "disable"})
    return 0


# uid2-publisher's name for the operator's address, accepted here too, with its variable.
_ALIASES = {"operator-address": "operator"}


def settings_of(args: argparse.Namespace) -> FlagsWithEnv:
    return FlagsWithEnv(args, "UID2_SSP_", {"bidder": "UID2_SSP_BIDDERS"}, _ALIASES)


def _config(settings: FlagsWithEnv, bidder_flags: list[str] | None) -> SspConfig:
    bidder_specs = bidder_flags
    if bidder_specs is None:
        bidder_specs = listed_bidders(settings.text("bidder") or "")
    data_dir = settings.text("data-dir")
    publishers_file = settings.text("publishers-file")
    if (data_dir is None) == (publishers_file is None):
        # Named with their variables: UID2_SSP_DATA_DIR, set for the admin commands, is the
        # usual second one when only --publishers-file was typed.
        raise UsageError(
            f"give exactly one of {settings.spelled('data-dir')} and "
            f"{settings.spelled('publishers-file')}"
        )
    # Parsed first, so a malformed address is named as such, not as a missing pair.
    operator = settings.value("operator", dial_address, None)
    operator_api_key = settings.value("operator-api-key", api_key, None)
    both_or_neither(settings, "operator", "operator-api-key")
    bidders = _bidders(settings, bidder_specs)
    return SspConfig(
        listen=settings.value("listen", host_port, "127.0.0.1:0"),
        data_dir=None if data_dir is None else Path(data_dir),
        publishers_file=None if publishers_file is None else Path(publishers_file),
        operator=operator,
        operator_api_key=operator_api_key,
        bidders=bidders,
        tmax_ms=settings.value("tmax-ms", integer_in(1, MAX_TMAX_MS), 150),
        key_refresh_s=settings.value("key-refresh-s", KEY_REFRESH_SECONDS, 3600.0),
        stream_buffer=settings.value("stream-buffer", integer_in(1, MAX_STREAM_BUFFER), 1024),
        tls=server_tls(settings),
        peer_tls=peer_tls(
            settings, ("operator", operator), *(("bidder", b.address) for b in bidders)
        ),
    )


def listed_bidders(listed: str) -> list[str]:
    """UID2_SSP_BIDDERS: NAME=HOST:PORTs, comma-separated, as --bidder repeats them. A bidder's
    address may itself be a comma-separated list (`ipv4:10.0.0.1:9000,10.0.0.2:9000`, which
    gRPC balances over), so a part without `=` continues the bidder before it: no address
    holds one."""
    specs: list[str] = []
    for part in listed.split(","):
        if not part.strip():
            continue
        if specs and "=" not in part:
            specs[-1] += "," + part.strip()
        else:
            specs.append(part)
    return specs


def _bidders(settings: FlagsWithEnv, specs: list[str]) -> tuple[BidderTarget, ...]:
    try:
        return tuple(parse_bidder(spec) for spec in specs)
    except ConfigError as exc:
        raise UsageError(f"--bidder (or {settings.env_name('bidder')}): {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    try:
        config = _config(settings, args.bidder)
        level = settings.value("log-level", log_level, "INFO")
        metrics_at = metrics_settings(settings, config.tls)
    except (ConfigError, UsageError) as exc:
        return fail(PROG, str(exc))
    configure_logging(level, service="ssp")
    warn_unknown_variables(settings, _parser())
    from ssp_svc.server import create_server
    from svc_common import metrics

    stop = catch_stop_signals()  # a stop during start-up (the opt-out backlog) still drains
    try:
        metrics.serve_until_stopped(
            "ssp",
            metrics_at,
            stop,
            lambda: create_server(config, stop=stop),
            "uid2_decryptor_",
            {
                "listen": config.listen,
                **server_tls_fields(config.tls),
                **peer_tls_fields(config.peer_tls),
            },
        )
    except StoreError as exc:
        return fail(PROG, f"cannot start: {exc}")
    except OSError as exc:
        return fail(PROG, f"cannot start: {os_error_text(exc)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return fail(PROG, str(exc))
    if args.command == "serve":
        return _serve(args)
    with silenced():
        try:
            data_dir = Path(settings_of(args).required("data-dir"))
            if args.command in ("backup", "restore"):
                return store_backup.run_command(args, data_dir, DB_NAME, StoreError, STORE_TABLES)
            kind = AccountKind.PUBLISHER if args.command == "publisher" else AccountKind.SUBSCRIBER
            if args.verb == "add":
                return _add_account(args, kind, data_dir)
            if args.verb == "list":
                return _list_accounts(kind, data_dir)
            return _set_disabled(args, kind, data_dir)
        except (UsageError, StoreError) as exc:
            return fail(PROG, str(exc))
        except OSError as exc:  # stdout full or closed
            return fail(PROG, exc.strerror or type(exc).__name__)


if __name__ == "__main__":
    sys.exit(main())
