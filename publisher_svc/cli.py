"""`uid2-publisher`: the publisher's console script.

    uid2-publisher serve --data-dir DIR --listen HOST:PORT
        --operator-address HOST:PORT --operator-api-key KEY --site-id N
        --ssp-address HOST:PORT --ssp-api-key KEY [--storage-mode server|client]
        [--on-behalf-of-site-id N] [--refresh-workers N] [--refresh-interval S]
        [--no-background-refresh] [--operator-timeout S] [--ssp-timeout S]
        [--operator-calls-max N] [--ssp-calls-max N] [--serve-refresh-budget S] [--log-level L]

Every flag falls back to an environment variable UID2_PUBLISHER_<FLAG> (for example
UID2_PUBLISHER_OPERATOR_API_KEY); prefer the environment for keys, which `ps` would show."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from publisher_svc.config import PublisherConfig
from publisher_svc.limits import DEFAULT_OPERATOR_CALLS_MAX, DEFAULT_SSP_CALLS_MAX
from publisher_svc.model import StorageMode
from publisher_svc.store import SqliteStore, StoreError
from publisher_svc.store.sqlite import STORE_TABLES
from svc_common import store_backup
from svc_common.cli_common import (
    FlagsWithEnv,
    MetricsSettings,
    OneLineParser,
    UsageError,
    add_metrics_flag,
    add_tls_flags,
    fail,
    metrics_settings,
    os_error_text,
    peer_tls,
    peer_tls_fields,
    server_tls,
    server_tls_fields,
    show_variables,
    warn_unknown_variables,
)
from svc_common.logging import configure_logging, silenced
from svc_common.settings import (
    SettingError,
    api_key,
    boolean,
    choice,
    dial_address,
    finite_float,
    host_port,
    integer_in,
    log_level,
)
from uid2_crypto.keys import MAX_SITE_ID

PROG = "uid2-publisher"
ENV_PREFIX = "UID2_PUBLISHER_"


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="uid2-publisher", description="The UID2 publisher gRPC service.")
    sub = parser.add_subparsers(dest="command", required=True)
    store_backup.add_commands(
        sub, "publisher", "directory of the SQLite store (env UID2_PUBLISHER_DATA_DIR)"
    )
    serve = sub.add_parser(
        "serve",
        help="serve PublisherService until SIGINT / SIGTERM",
        description="Serve PublisherService. Each flag falls back to UID2_PUBLISHER_<FLAG>.",
    )
    serve.add_argument("--listen", help="HOST:PORT to bind (port 0 picks one)")
    serve.add_argument("--data-dir", help="directory of the SQLite store")
    serve.add_argument("--operator-address", help="the UID2 operator's HOST:PORT")
    serve.add_argument(
        "--operator-api-key",
        help="GENERATOR API key: this publisher's, or an identity provider's (see "
        "--on-behalf-of-site-id); pass it in the variable rather than the flag, which `ps` shows",
    )
    serve.add_argument("--site-id", help="this publisher's site id")
    serve.add_argument(
        "--on-behalf-of-site-id",
        help="SSO / identity-provider mode: generate for this publisher site with the "
        "provider's key (the site must have delegated to the provider); default 0 = own site",
    )
    serve.add_argument("--ssp-address", help="the SSP's HOST:PORT")
    serve.add_argument("--ssp-api-key", help="the API key the SSP issued to this publisher")
    serve.add_argument(
        "--storage-mode",
        help="server: keep identities in a table keyed by user id (default); client: hand "
        "them back as the __uid_2 cookie and store nothing",
    )
    serve.add_argument("--refresh-workers", help="background refresh concurrency (default 8)")
    serve.add_argument(
        "--refresh-interval", help="seconds between background refresh polls (default 1)"
    )
    serve.add_argument(
        "--no-background-refresh",
        action="store_true",
        default=None,
        help="refresh only on demand (GetAdvertisingToken)",
    )
    serve.add_argument("--operator-timeout", help="operator call deadline, seconds (default 2)")
    serve.add_argument("--ssp-timeout", help="SSP call deadline, seconds (default 2)")
    serve.add_argument(
        "--operator-calls-max",
        help=f"callers' calls waiting on the operator at once, at most (default "
        f"{DEFAULT_OPERATOR_CALLS_MAX}); past it a slow operator is not asked (OPERATOR_BUSY)",
    )
    serve.add_argument(
        "--ssp-calls-max",
        help=f"ServeAd calls waiting on the SSP at once, at most (default "
        f"{DEFAULT_SSP_CALLS_MAX}); past it a slow SSP is not asked (SSP_BUSY)",
    )
    serve.add_argument(
        "--serve-refresh-budget",
        help="seconds ServeAd waits for a due refresh (default 0.3) before sending the held "
        "token if unexpired, else none; a refresh already in flight is not waited on",
    )
    add_tls_flags(serve, peers="the operator and the SSP")
    add_metrics_flag(serve)
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR, CRITICAL")
    show_variables(serve, settings_of(argparse.Namespace()))
    return parser


# Every float flag is a duration in seconds; past an hour none makes sense, and a huge one
# overflows the platform's timeouts (time_t) when it is waited on.
_MAX_SECONDS = 3600.0


# Each slot of the peer-call bounds gets a server thread of its own (server.py): past a few
# hundred, threads cost more than the calls they would serve.
_MAX_PEER_CALLS = 256


def _poll_seconds(text: str) -> float:
    # How often the refresher looks for due identities: below 10 ms it would poll the store
    # in a busy loop.
    x = _seconds(text)
    if x < 0.01:
        raise SettingError("must be at least 0.01 seconds")
    return x


def _seconds(text: str) -> float:
    x = finite_float(text)
    if not 0 < x <= _MAX_SECONDS:
        raise SettingError(f"must be positive and at most {_MAX_SECONDS:g} seconds")
    return x


def settings_of(args: argparse.Namespace) -> FlagsWithEnv:
    return FlagsWithEnv(args, ENV_PREFIX)


def parse_config(args: argparse.Namespace) -> PublisherConfig:
    settings = settings_of(args)
    data_dir = settings.required("data-dir")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError("--data-dir is not a directory")
    operator_address = settings.required_value("operator-address", dial_address)
    ssp_address = settings.required_value("ssp-address", dial_address)
    return PublisherConfig(
        listen=settings.required_value("listen", host_port),
        data_dir=data_dir,
        operator_address=operator_address,
        operator_api_key=settings.required_value("operator-api-key", api_key),
        site_id=settings.required_value("site-id", integer_in(1, MAX_SITE_ID)),
        ssp_address=ssp_address,
        ssp_api_key=settings.required_value("ssp-api-key", api_key),
        storage_mode=settings.value("storage-mode", choice(StorageMode), StorageMode.SERVER),
        on_behalf_of_site_id=settings.value("on-behalf-of-site-id", integer_in(0, MAX_SITE_ID), 0),
        refresh_workers=settings.value("refresh-workers", integer_in(1), 8),
        refresh_interval_s=settings.value("refresh-interval", _poll_seconds, 1.0),
        background_refresh=not settings.value("no-background-refresh", boolean, False),
        operator_timeout_s=settings.value("operator-timeout", _seconds, 2.0),
        ssp_timeout_s=settings.value("ssp-timeout", _seconds, 2.0),
        operator_calls_max=settings.value(
            "operator-calls-max", integer_in(1, _MAX_PEER_CALLS), DEFAULT_OPERATOR_CALLS_MAX
        ),
        ssp_calls_max=settings.value(
            "ssp-calls-max", integer_in(1, _MAX_PEER_CALLS), DEFAULT_SSP_CALLS_MAX
        ),
        serve_refresh_budget_s=settings.value("serve-refresh-budget", _seconds, 0.3),
        log_level=settings.value("log-level", log_level, "INFO"),
        tls=server_tls(settings),
        peer_tls=peer_tls(
            settings, ("operator-address", operator_address), ("ssp-address", ssp_address)
        ),
    )


def _serve(config: PublisherConfig, metrics_at: MetricsSettings | None) -> int:
    from publisher_svc.server import create_server
    from svc_common import metrics
    from svc_common.stop_signals import catch_stop_signals

    stop = catch_stop_signals()  # a stop during start-up still drains and exits 0
    metrics.serve_until_stopped(
        "publisher",
        metrics_at,
        stop,
        lambda: create_server(config),
        "uid2_publisher_",
        {
            "storage_mode": config.storage_mode.value,
            **server_tls_fields(config.tls),
            **peer_tls_fields(config.peer_tls),
        },
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
        if args.command in ("backup", "restore"):
            data_dir = Path(settings_of(args).required("data-dir"))
            with silenced():
                return store_backup.run_command(
                    args, data_dir, SqliteStore.FILE_NAME, StoreError, STORE_TABLES
                )
        config = parse_config(args)
        metrics_at = metrics_settings(settings_of(args), config.tls)
    except (UsageError, StoreError) as exc:
        return fail(PROG, str(exc))
    configure_logging(config.log_level, service="publisher")
    warn_unknown_variables(settings_of(args), _parser())
    try:
        return _serve(config, metrics_at)
    except StoreError as exc:
        return fail(PROG, f"cannot start: {exc}")
    except OSError as exc:
        return fail(PROG, f"cannot start: {os_error_text(exc)}")


if __name__ == "__main__":
    sys.exit(main())
