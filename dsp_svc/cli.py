"""`uid2-dsp`: a sample DSP bidder (BidderService) for the demo and tests.

    uid2-dsp serve --listen HOST:PORT --name NAME [--operator HOST:PORT --operator-api-key KEY]
                   [--base-price P] [--identified-bonus B] [--delay-ms N]
                   [--mode normal|slow|fail|garbage] [--fail-rate F]

Flags fall back to UID2_DSP_<FLAG> environment variables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bidstream.decryptor.key_cache import KEY_REFRESH_SECONDS
from dsp_svc.config import MAX_DELAY_MS, ConfigError, DspConfig, Mode
from svc_common.cli_common import (
    FlagsWithEnv,
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
    server_tls,
    server_tls_fields,
    show_variables,
    warn_unknown_variables,
)
from svc_common.impression_limits import MAX_FLOOR_PRICE
from svc_common.logging import configure_logging
from svc_common.settings import (
    api_key,
    choice,
    dial_address,
    host_port,
    integer_in,
    log_level,
    number_in,
)
from svc_common.stop_signals import catch_stop_signals

PROG = "uid2-dsp"


def _parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Sample UID2 DSP bidder (BidderService).")
    sub = p.add_subparsers(dest="command", required=True)
    # Each falls back to UID2_DSP_<FLAG> (FlagsWithEnv); show_variables names it in the help.
    s = sub.add_parser("serve", help="serve gRPC until SIGINT/SIGTERM")
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:0)")
    s.add_argument("--name", help="the bidder's name in the SSP's auctions (required)")
    s.add_argument("--operator", help="the operator's HOST:PORT")
    # A flag of its own, not a second spelling of --operator: FlagsWithEnv then reads its
    # variable too, and refuses the two giving different addresses (_ALIASES).
    s.add_argument("--operator-address", help="the same as --operator, as in uid2-publisher")
    s.add_argument("--operator-api-key", help="ID_READER key")
    s.add_argument("--base-price", help="bid for an anonymous impression (default 1.0)")
    s.add_argument("--identified-bonus", help="added for a decrypted UID2 (default 1.5)")
    s.add_argument("--delay-ms", help="wait before answering (default 0)")
    s.add_argument("--key-refresh-s", help="key refresh interval (default 3600)")
    # --mode and --fail-rate combine (a slow bidder that also fails now and then; garbage or an
    # error), so neither place makes them exclusive; only --mode fail leaves no share to set.
    s.add_argument("--mode", help="normal (default), slow, fail or garbage")
    s.add_argument(
        "--fail-rate",
        help="share of calls answered with an error, in any mode but fail (default 0)",
    )
    add_tls_flags(s, peers="the operator")
    add_metrics_flag(s)
    s.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR, CRITICAL")
    show_variables(s, settings_of(argparse.Namespace()))
    return p


# uid2-publisher's name for the operator's address, accepted here too, with its variable.
_ALIASES = {"operator-address": "operator"}


def settings_of(args: argparse.Namespace) -> FlagsWithEnv:
    return FlagsWithEnv(args, "UID2_DSP_", aliases=_ALIASES)


def _config(settings: FlagsWithEnv) -> DspConfig:
    mode = settings.value("mode", choice(Mode), Mode.NORMAL)
    fail_rate = settings.value("fail-rate", number_in(0.0, 1.0), 0.0)
    if mode is Mode.FAIL and fail_rate:
        # Every call fails in that mode: a share given with it would be silently ignored.
        raise UsageError(
            f"--fail-rate (or {settings.env_name('fail-rate')}) has no effect with --mode fail "
            f"(or {settings.env_name('mode')}=fail), which fails every call: give one of them"
        )
    # Parsed first, so a malformed address is named as such, not as a missing pair.
    operator = settings.value("operator", dial_address, None)
    operator_api_key = settings.value("operator-api-key", api_key, None)
    both_or_neither(settings, "operator", "operator-api-key")
    return DspConfig(
        name=settings.required("name"),
        listen=settings.value("listen", host_port, "127.0.0.1:0"),
        operator=operator,
        operator_api_key=operator_api_key,
        # Above the highest floor a publisher may set, the SSP throws a bid out as a bug.
        base_price=settings.value("base-price", number_in(0.0, MAX_FLOOR_PRICE), 1.0),
        identified_bonus=settings.value("identified-bonus", number_in(0.0, MAX_FLOOR_PRICE), 1.5),
        delay_ms=settings.value("delay-ms", integer_in(0, MAX_DELAY_MS), 0),
        fail_rate=fail_rate,
        mode=mode,
        key_refresh_s=settings.value("key-refresh-s", KEY_REFRESH_SECONDS, 3600.0),
        tls=server_tls(settings),
        peer_tls=peer_tls(settings, ("operator", operator)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_of(_parser().parse_args(argv))
        config = _config(settings)
        level = settings.value("log-level", log_level, "INFO")
        metrics_at = metrics_settings(settings, config.tls)
    except (UsageError, ConfigError) as exc:
        return fail(PROG, str(exc))
    configure_logging(level, service="dsp")
    warn_unknown_variables(settings, _parser())
    from dsp_svc.server import create_server
    from svc_common import metrics

    stop = catch_stop_signals()  # a stop during start-up still drains and exits 0
    try:
        metrics.serve_until_stopped(
            "dsp",
            metrics_at,
            stop,
            lambda: create_server(config, stop=stop),
            "uid2_decryptor_",
            {
                "listen": config.listen,
                "name": config.name,
                **server_tls_fields(config.tls),
                **peer_tls_fields(config.peer_tls),
            },
        )
    except OSError as exc:
        return fail(PROG, f"cannot start: {os_error_text(exc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
