"""`uid2-publisher`: the publisher's console script.

    uid2-publisher serve --data-dir DIR --listen HOST:PORT
        --operator-address HOST:PORT --operator-api-key KEY --site-id N
        --ssp-address HOST:PORT --ssp-api-key KEY [--storage-mode server|client]
        [--on-behalf-of-site-id N] [--refresh-workers N] [--refresh-interval S]
        [--no-background-refresh] [--operator-timeout S] [--ssp-timeout S]
        [--serve-refresh-budget S] [--log-level L]

Every flag falls back to an environment variable UID2_PUBLISHER_<FLAG> (for example
UID2_PUBLISHER_OPERATOR_API_KEY); prefer the environment for keys, which `ps` would show."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import structlog

from publisher_svc.config import PublisherConfig
from publisher_svc.publisher import StorageMode
from publisher_svc.store import StoreError
from svc_common.logging import configure_logging
from svc_common.settings import SettingError, boolean, finite_float, log_level

ENV_PREFIX = "UID2_PUBLISHER_"

T = TypeVar("T")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _env(flag: str) -> str | None:
    return os.environ.get(_env_name(flag))


def _parser() -> _Parser:
    parser = _Parser(prog="uid2-publisher", description="The UID2 publisher gRPC service.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
        "--on-behalf-of-site-id); prefer UID2_PUBLISHER_OPERATOR_API_KEY",
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
        "--serve-refresh-budget",
        help="seconds ServeAd waits for the refresh of an expired token before serving the "
        "impression without one (default 0.3); an unexpired token is sent at once",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    return parser


def _value(args: argparse.Namespace, flag: str, default: str | None = None) -> str | None:
    v = getattr(args, flag.replace("-", "_"))
    if v is None:
        v = _env(flag)
    return default if v is None or v == "" else str(v)


def _required(args: argparse.Namespace, flag: str) -> str:
    v = _value(args, flag)
    if v is None:
        raise UsageError(f"--{flag} (or {_env_name(flag)}) is required")
    return v


def _int(args: argparse.Namespace, flag: str, default: str, *, minimum: int = 0) -> int:
    text = _value(args, flag, default) or default
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--{flag} must be an integer") from None
    if n < minimum:
        raise UsageError(f"--{flag} must be at least {minimum}")
    return n


def _parsed(parse: Callable[[str], T], args: argparse.Namespace, flag: str, default: str) -> T:
    text = _value(args, flag, default) or default
    try:
        return parse(text)
    except SettingError as exc:
        raise UsageError(f"--{flag} (or {_env_name(flag)}): {exc}") from None


# Every float flag is a duration in seconds; past an hour none makes sense, and a huge one
# overflows the platform's timeouts (time_t) when it is waited on.
_MAX_SECONDS = 3600.0


def _float(args: argparse.Namespace, flag: str, default: str) -> float:
    x = _parsed(finite_float, args, flag, default)
    if not 0 < x <= _MAX_SECONDS:
        raise UsageError(f"--{flag} must be positive and at most {_MAX_SECONDS:g} seconds")
    return x


def _address(args: argparse.Namespace, flag: str) -> str:
    v = _required(args, flag)
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--{flag} must be HOST:PORT")
    return v


def parse_config(args: argparse.Namespace) -> PublisherConfig:
    mode_text = (_value(args, "storage-mode", "server") or "server").lower()
    try:
        mode = StorageMode(mode_text)
    except ValueError:
        raise UsageError("--storage-mode must be server or client") from None
    no_bg = _parsed(boolean, args, "no-background-refresh", "false")
    data_dir = _required(args, "data-dir")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError("--data-dir is not a directory")
    site_id = _int(args, "site-id", "0", minimum=1) if _value(args, "site-id") else None
    if site_id is None:
        raise UsageError(f"--site-id (or {ENV_PREFIX}SITE_ID) is required")
    return PublisherConfig(
        listen=_address(args, "listen"),
        data_dir=data_dir,
        operator_address=_address(args, "operator-address"),
        operator_api_key=_required(args, "operator-api-key"),
        site_id=site_id,
        ssp_address=_address(args, "ssp-address"),
        ssp_api_key=_required(args, "ssp-api-key"),
        storage_mode=mode,
        on_behalf_of_site_id=_int(args, "on-behalf-of-site-id", "0"),
        refresh_workers=_int(args, "refresh-workers", "8", minimum=1),
        refresh_interval_s=_float(args, "refresh-interval", "1"),
        background_refresh=not no_bg,
        operator_timeout_s=_float(args, "operator-timeout", "2"),
        ssp_timeout_s=_float(args, "ssp-timeout", "2"),
        serve_refresh_budget_s=_float(args, "serve-refresh-budget", "0.3"),
        log_level=_parsed(log_level, args, "log-level", "INFO"),
    )


def _serve(config: PublisherConfig) -> int:
    from publisher_svc.server import create_server
    from svc_common.stop_signals import catch_stop_signals, wait_for_signal

    log = structlog.get_logger("cli")
    stop = catch_stop_signals()  # a stop during start-up still drains and exits 0
    served, port = create_server(config)
    log.info("serving", port=port, storage_mode=config.storage_mode.value)
    try:
        wait_for_signal(stop)
    finally:
        log.info("stopping")
        served.stop(5.0)
        log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
        config = parse_config(args)
    except UsageError as exc:
        print(f"uid2-publisher: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, service="publisher")
    try:
        return _serve(config)
    except StoreError as exc:
        _fail(f"cannot start: {exc}")
        return 2
    except OSError as exc:
        _fail(f"cannot start: {exc.strerror or str(exc) or type(exc).__name__}")
        return 2


def _fail(message: str, **_: Any) -> None:
    print(f"uid2-publisher: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
