"""`uid2-ssp`: manage publisher / subscriber API keys and serve the SSP.

    uid2-ssp publisher add  --data-dir DIR --name NAME (--domain D | --app BUNDLE)...  (>= 1)
    uid2-ssp subscriber add --data-dir DIR --name NAME
    uid2-ssp serve (--data-dir DIR | --publishers-file FILE) --listen HOST:PORT
                   [--operator HOST:PORT --operator-api-key KEY] [--bidder NAME=HOST:PORT]...
                   [--tmax-ms 150] [--key-refresh-s 3600] [--stream-buffer 1024]

Every serve flag falls back to an environment variable UID2_SSP_<FLAG> (UID2_SSP_BIDDERS takes
a comma-separated list). Without operator credentials tokens pass through unchecked."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from ssp_svc.config import ConfigError, SspConfig, parse_bidder
from ssp_svc.store.accounts import (
    AccountKind,
    SqliteAccountStore,
    StoreError,
    normalise_inventory,
)
from svc_common.cli_common import OneLineParser, UsageError, env, env_float, env_int, fail
from svc_common.clock import SystemClock
from svc_common.logging import configure_logging
from svc_common.settings import finite_float, log_level
from svc_common.stop_signals import catch_stop_signals, wait_for_signal


def _parser() -> OneLineParser:
    p = OneLineParser(prog="uid2-ssp", description="UID2 SSP: impressions, auctions, bid stream.")
    sub = p.add_subparsers(dest="command", required=True)

    for noun, kind in (("publisher", "publisher"), ("subscriber", "bid-stream subscriber")):
        group = sub.add_parser(noun, help=f"manage {kind} API keys")
        verbs = group.add_subparsers(dest="verb", required=True)
        add = verbs.add_parser("add", help=f"create a {kind} and print its API key as JSON")
        add.add_argument("--data-dir", required=True, type=Path)
        add.add_argument("--name", required=True)
        if noun == "publisher":
            add.add_argument("--domain", action="append", default=[], help="allowed page domain")
            add.add_argument("--app", action="append", default=[], help="allowed app bundle")

    serve = sub.add_parser("serve", help="serve gRPC until SIGINT/SIGTERM")
    serve.add_argument("--data-dir", type=Path, default=env("UID2_SSP_DATA_DIR"))
    serve.add_argument(
        "--publishers-file", type=Path, default=env("UID2_SSP_PUBLISHERS_FILE"),
        help="JSON publishers/subscribers file instead of a data dir",
    )  # fmt: skip
    serve.add_argument("--listen", default=env("UID2_SSP_LISTEN", "127.0.0.1:0"))
    serve.add_argument(
        "--operator",
        "--operator-address",
        dest="operator",
        default=env("UID2_SSP_OPERATOR"),
        help="the operator's HOST:PORT (--operator-address as in uid2-publisher)",
    )
    serve.add_argument(
        "--operator-api-key", default=env("UID2_SSP_OPERATOR_API_KEY"), help="ID_READER key"
    )
    serve.add_argument(
        "--bidder", action="append", default=None, metavar="NAME=HOST:PORT",
        help="a BidderService to call (repeatable)",
    )  # fmt: skip
    serve.add_argument("--tmax-ms", type=int, default=None)
    serve.add_argument("--key-refresh-s", type=finite_float, default=None)
    serve.add_argument("--stream-buffer", type=int, default=None)
    serve.add_argument("--log-level", type=log_level, default=env("UID2_SSP_LOG_LEVEL", "INFO"))
    return p


def _add_account(args: argparse.Namespace, kind: AccountKind) -> int:
    data_dir: Path = args.data_dir
    name: str = args.name.strip()
    if not name:
        return fail("uid2-ssp: --name must not be empty")
    try:
        domains, apps = normalise_inventory(getattr(args, "domain", []), getattr(args, "app", []))
    except ValueError as exc:
        return fail(f"uid2-ssp: {exc}")
    if kind is AccountKind.PUBLISHER and not domains and not apps:
        # It may sell only inventory it registered, so without any it could sell nothing.
        return fail("uid2-ssp: a publisher needs at least one --domain or --app")
    try:
        store = SqliteAccountStore(data_dir, rng=os.urandom, clock=SystemClock())
        try:
            account, api_key = store.add(name, kind, domains, apps)
        finally:
            store.close()
    except StoreError as exc:
        return fail(f"uid2-ssp: {exc}")
    out: dict[str, object] = {"name": account.name, "api_key": api_key}
    if kind is AccountKind.PUBLISHER:
        out["domains"] = list(domains)
        out["apps"] = list(apps)
    print(json.dumps(out))
    return 0


def _config(args: argparse.Namespace) -> SspConfig:
    bidder_specs: list[str] | None = args.bidder
    if bidder_specs is None:
        bidder_specs = [s for s in (env("UID2_SSP_BIDDERS", "") or "").split(",") if s.strip()]

    def pick_int(flag: str, env_name: str, default: int) -> int:
        value: int | None = getattr(args, flag)
        return value if value is not None else env_int(env_name, default)

    key_refresh: float | None = args.key_refresh_s
    return SspConfig(
        listen=args.listen,
        data_dir=args.data_dir,
        publishers_file=args.publishers_file,
        operator=args.operator or None,
        operator_api_key=args.operator_api_key or None,
        bidders=tuple(parse_bidder(s) for s in bidder_specs),
        tmax_ms=pick_int("tmax_ms", "UID2_SSP_TMAX_MS", 150),
        key_refresh_s=(
            key_refresh if key_refresh is not None else env_float("UID2_SSP_KEY_REFRESH_S", 3600.0)
        ),
        stream_buffer=pick_int("stream_buffer", "UID2_SSP_STREAM_BUFFER", 1024),
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except (ConfigError, UsageError) as exc:
        return fail(f"uid2-ssp: {exc}")
    configure_logging(args.log_level, service="ssp")
    log = structlog.get_logger("ssp")
    from ssp_svc.server import create_server

    stop = catch_stop_signals()  # a stop during start-up (the opt-out backlog) still drains
    try:
        served, port = create_server(config, stop=stop)
    except (StoreError, OSError) as exc:
        return fail(f"uid2-ssp: cannot start: {exc}")
    log.info("serving", port=port, listen=config.listen)
    wait_for_signal(stop)
    served.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return fail(str(exc))
    if args.command == "serve":
        return _serve(args)
    kind = AccountKind.PUBLISHER if args.command == "publisher" else AccountKind.SUBSCRIBER
    return _add_account(args, kind)


if __name__ == "__main__":
    sys.exit(main())
