"""`uid2-ssp serve` and `uid2-dsp serve` take the operator's address as `--operator` or, as in
uid2-publisher, `--operator-address`; each name's variable gives it too, two names giving
different addresses are one line on stderr (exit 2), and a missing half of the operator's
address and key names the flags and variables involved."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from dsp_svc import cli as dsp_cli
from ssp_svc import cli as ssp_cli
from svc_common.cli_common import FlagsWithEnv, UsageError
from svc_common.settings import SettingError

SERVICES = [(ssp_cli, "UID2_SSP_"), (dsp_cli, "UID2_DSP_")]
IDS = ["ssp", "dsp"]


def _argv(cli: ModuleType, tmp_path: Path, *flags: str) -> list[str]:
    base = ["--data-dir", str(tmp_path)] if cli is ssp_cli else ["--name", "d"]
    return ["serve", *base, *flags]


def _operator(cli: ModuleType, argv: list[str]) -> str | None:
    args = cli._parser().parse_args(argv)
    settings = cli.settings_of(args)
    config = cli._config(settings, args.bidder) if cli is ssp_cli else cli._config(settings)
    operator: str | None = config.operator
    return operator


@pytest.mark.parametrize(("cli", "prefix"), SERVICES, ids=IDS)
def test_the_alias_and_its_variable_give_the_address(
    cli: ModuleType, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was ignored: the DSP served without the operator, the SSP said "go together".
    monkeypatch.setenv(prefix + "OPERATOR_ADDRESS", "127.0.0.1:50051")
    monkeypatch.setenv(prefix + "OPERATOR_API_KEY", "reader-key")
    assert _operator(cli, _argv(cli, tmp_path)) == "127.0.0.1:50051"
    # Both names with the same address: nothing to choose between.
    monkeypatch.setenv(prefix + "OPERATOR", "127.0.0.1:50051")
    assert _operator(cli, _argv(cli, tmp_path)) == "127.0.0.1:50051"
    # A flag comes before any variable, as for every setting.
    argv = _argv(cli, tmp_path, "--operator-address", "127.0.0.1:6")
    assert _operator(cli, argv) == "127.0.0.1:6"


@pytest.mark.parametrize(("cli", "prefix"), SERVICES, ids=IDS)
@pytest.mark.parametrize(
    ("flags", "env", "names"),
    [
        ([], {"OPERATOR": "127.0.0.1:1", "OPERATOR_ADDRESS": "127.0.0.1:2"},
         "{p}OPERATOR and {p}OPERATOR_ADDRESS are the same setting but differ: give one"),
        (["--operator", "127.0.0.1:1", "--operator-address", "127.0.0.1:2"], {},
         "--operator and --operator-address are the same setting but differ: give one"),
        (["--operator-api-key", "k"], {},
         "--operator (or {p}OPERATOR) and --operator-api-key (or {p}OPERATOR_API_KEY) go "
         "together"),
        ([], {"OPERATOR_ADDRESS": "127.0.0.1:2"},
         "--operator-address (or {p}OPERATOR_ADDRESS) and --operator-api-key (or "
         "{p}OPERATOR_API_KEY) go together"),
    ],
    ids=["variables-differ", "flags-differ", "no-address", "no-key"],
)  # fmt: skip
def test_mistakes_are_one_line_naming_the_flags_and_variables(
    cli: ModuleType,
    prefix: str,
    flags: list[str],
    env: dict[str, str],
    names: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(prefix + name, value)
    monkeypatch.setattr("svc_common.metrics.wait_for_signal", _never)
    assert cli.main(_argv(cli, tmp_path, *flags)) == 2
    assert capsys.readouterr().err == f"{cli.PROG}: error: {names.format(p=prefix)}\n"


def _settings() -> FlagsWithEnv:
    args = argparse.Namespace(host=None, host_address=None)
    return FlagsWithEnv(args, "UID2_T_", aliases={"host-address": "host"})


def test_an_alias_names_itself_in_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match=r"^--host \(or UID2_T_HOST\) or --host-address \(or "):
        _settings().required("host")
    monkeypatch.setenv("UID2_T_HOST_ADDRESS", "x")
    with pytest.raises(UsageError, match=r"^--host-address \(or UID2_T_HOST_ADDRESS\): "):
        _settings().value("host", _refuse, None)


def _refuse(text: str) -> str:
    raise SettingError(f"{text!r} refused")


def _never(*_: object) -> NoReturn:
    raise AssertionError("the service started serving")
