"""`serve --help` names the environment variable of every flag, for all four services: the one
FlagsWithEnv reads (README, Configuration), overrides and aliases included."""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from dsp_svc import cli as dsp_cli
from operator_svc import cli as operator_cli
from publisher_svc import cli as publisher_cli
from ssp_svc import cli as ssp_cli


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize(
    "cli", [operator_cli, publisher_cli, ssp_cli, dsp_cli], ids=["operator", "publisher", "ssp",
                                                                 "dsp"]
)  # fmt: skip
def test_every_serve_flag_shows_its_variable(cli: ModuleType) -> None:
    serve = _subparser(cli._parser(), "serve")
    settings = cli.settings_of(argparse.Namespace())
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 10
    missing = [
        a.option_strings[0]
        for a in flags
        if f"(env {settings.env_name(a.dest.replace('_', '-'))})" not in (a.help or "")
    ]
    assert missing == []
    text = serve.format_help()  # argparse %-formats help texts: none may break it
    assert "(env" in text


def test_the_operators_second_suffix_and_the_ssps_bidders_are_shown() -> None:
    serve = _subparser(operator_cli._parser(), "serve").format_help()
    assert "UID2_OPERATOR_SYNC_INTERVAL_S" in " ".join(serve.split())
    assert "(env UID2_OPERATOR_ROTATE_KEYS_EVERY_S)" in " ".join(serve.split())
    rotate = " ".join(_subparser(operator_cli._parser(), "keys", "rotate").format_help().split())
    assert "(env UID2_OPERATOR_TOKEN_LIFETIME_S)" in rotate
    assert "UID2_OPERATOR_ACTIVATION_DELAY" not in rotate  # read from the flag only
    assert "(env UID2_SSP_BIDDERS)" in " ".join(
        _subparser(ssp_cli._parser(), "serve").format_help().split()
    )


@pytest.mark.parametrize(
    ("cli", "prefix"),
    [
        (operator_cli, "UID2_OPERATOR_"),
        (publisher_cli, "UID2_PUBLISHER_"),
        (ssp_cli, "UID2_SSP_"),
        (dsp_cli, "UID2_DSP_"),
    ],
    ids=["operator", "publisher", "ssp", "dsp"],
)
def test_a_variable_no_setting_reads_is_named(cli: ModuleType, prefix: str) -> None:
    """UID2_OPERATOR_TOKEN_LIFETIME (its setting's variable ends _S) was silently ignored and
    the 3-day default applied (misconfiguration review)."""
    settings = cli.settings_of(argparse.Namespace())
    parser = cli._parser()
    serve = _subparser(parser, "serve")
    every = [
        settings.env_name(a.dest.replace("_", "-"))
        for a in serve._actions
        if a.option_strings and a.dest != "help"
    ]
    misspelt = prefix + "LISTEN_ADDRESS"
    environ = {name: "x" for name in every} | {misspelt: "1", "UID2_OTHER_THING": "1", "PATH": "/"}
    assert settings.unknown_variables(parser, environ) == [misspelt]


def test_kubernetes_service_variables_are_not_taken_for_misspelt_settings() -> None:
    """Deployment review: a Service named uid2-dsp puts UID2_DSP_SERVICE_HOST, UID2_DSP_PORT
    and the like in every container of its namespace, and every start warned of them."""
    settings = dsp_cli.settings_of(argparse.Namespace())
    linked = {
        "UID2_DSP_SERVICE_HOST": "10.0.0.5",
        "UID2_DSP_SERVICE_PORT": "50061",
        "UID2_DSP_SERVICE_PORT_GRPC": "50061",
        "UID2_DSP_PORT": "tcp://10.0.0.5:50061",
        "UID2_DSP_PORT_50061_TCP": "tcp://10.0.0.5:50061",
        "UID2_DSP_PORT_50061_TCP_PROTO": "tcp",
        "UID2_DSP_PORT_50061_TCP_PORT": "50061",
        "UID2_DSP_PORT_50061_TCP_ADDR": "10.0.0.5",
        "UID2_DSP_METRICS_SERVICE_HOST": "10.0.0.6",
    }
    # A variable of that shape that is no Service's is still named.
    misspelt = {"UID2_DSP_PORT": "50061", "UID2_DSP_OPERATOR_ADDR": "127.0.0.1:1"}
    assert settings.unknown_variables(dsp_cli._parser(), linked) == []
    assert settings.unknown_variables(dsp_cli._parser(), misspelt) == sorted(misspelt)
