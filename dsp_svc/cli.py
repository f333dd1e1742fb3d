"""`uid2-dsp`: a sample DSP bidder (BidderService) for the demo and tests.

    uid2-dsp serve --listen HOST:PORT --name NAME [--operator HOST:PORT --operator-api-key KEY]
                   [--base-price P] [--identified-bonus B] [--delay-ms N]
                   [--fail-rate F | --mode normal|slow|fail|garbage]

Flags fall back to UID2_DSP_<FLAG> environment variables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from dsp_svc.config import ConfigError, DspConfig, Mode
from svc_common.cli_common import OneLineParser, UsageError, env, env_float, env_int, fail
from svc_common.logging import configure_logging
from svc_common.settings import finite_float, log_level
from svc_common.stop_signals import catch_stop_signals, wait_for_signal


def _parser() -> OneLineParser:
    p = OneLineParser(prog="uid2-dsp", description="Sample UID2 DSP bidder (BidderService).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve gRPC until SIGINT/SIGTERM")
    s.add_argument("--listen", default=env("UID2_DSP_LISTEN", "127.0.0.1:0"))
    s.add_argument("--name", default=env("UID2_DSP_NAME"))
    s.add_argument(
        "--operator",
        "--operator-address",
        dest="operator",
        default=env("UID2_DSP_OPERATOR"),
        help="the operator's HOST:PORT (--operator-address as in uid2-publisher)",
    )
    s.add_argument("--operator-api-key", default=env("UID2_DSP_OPERATOR_API_KEY"))
    s.add_argument("--base-price", type=finite_float, default=None)
    s.add_argument("--identified-bonus", type=finite_float, default=None)
    s.add_argument("--delay-ms", type=int, default=None)
    s.add_argument("--key-refresh-s", type=finite_float, default=None)
    group = s.add_mutually_exclusive_group()
    group.add_argument("--fail-rate", type=finite_float, default=None)
    group.add_argument("--mode", choices=[m.value for m in Mode], default=None)
    s.add_argument("--log-level", type=log_level, default=env("UID2_DSP_LOG_LEVEL", "INFO"))
    return p


def _config(args: argparse.Namespace) -> DspConfig:
    if not args.name:
        raise UsageError("--name is required")

    def f(value: float | None, env_name: str, default: float) -> float:
        return value if value is not None else env_float(env_name, default)

    mode = args.mode or env("UID2_DSP_MODE", "normal")
    if mode not in {m.value for m in Mode}:
        raise UsageError("mode must be one of normal, slow, fail, garbage")
    return DspConfig(
        name=args.name,
        listen=args.listen,
        operator=args.operator or None,
        operator_api_key=args.operator_api_key or None,
        base_price=f(args.base_price, "UID2_DSP_BASE_PRICE", 1.0),
        identified_bonus=f(args.identified_bonus, "UID2_DSP_IDENTIFIED_BONUS", 1.5),
        delay_ms=args.delay_ms if args.delay_ms is not None else env_int("UID2_DSP_DELAY_MS", 0),
        fail_rate=f(args.fail_rate, "UID2_DSP_FAIL_RATE", 0.0),
        mode=Mode(mode),
        key_refresh_s=f(args.key_refresh_s, "UID2_DSP_KEY_REFRESH_S", 3600.0),
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        config = _config(args)
    except (UsageError, ConfigError) as exc:
        msg = str(exc)
        return fail(msg if msg.startswith("uid2-dsp") else f"uid2-dsp: {msg}")
    configure_logging(args.log_level, service="dsp")
    log = structlog.get_logger("dsp")
    from dsp_svc.server import create_server

    stop = catch_stop_signals()  # a stop during start-up still drains and exits 0
    try:
        served, port = create_server(config, stop=stop)
    except OSError as exc:
        return fail(f"uid2-dsp: cannot start: {exc}")
    log.info("serving", port=port, listen=config.listen, name=config.name)
    wait_for_signal(stop)
    served.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
