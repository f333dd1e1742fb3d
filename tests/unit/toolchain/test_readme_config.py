"""README's configuration table names every environment variable a `serve` command reads:
literally, or by the row's `UID2_<SERVICE>_<FLAG>` rule applied to a flag the row lists.

What a command reads is taken from the command itself: every flag of its `serve` parser falls
back to the variable its `settings_of` resolver names (svc_common.cli_common.FlagsWithEnv)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from dsp_svc import cli as dsp_cli
from operator_svc import cli as operator_cli
from publisher_svc import cli as publisher_cli
from ssp_svc import cli as ssp_cli

REPO = Path(__file__).resolve().parents[3]


def _row(command: str) -> str:
    for line in (REPO / "README.md").read_text("utf-8").splitlines():
        if line.startswith(f"| `{command}` |"):
            return line
    raise AssertionError(f"README has no configuration row for {command}")


def _named(row: str) -> set[str]:
    names = set(re.findall(r"`(UID2_[A-Z0-9_]+)`", row))
    rule = re.search(r"`(UID2_[A-Z]+_)<FLAG>`", row)
    if rule:
        flags = re.findall(r"`--([a-z][a-z-]*)", row)
        names |= {rule.group(1) + f.upper().replace("-", "_") for f in flags}
    return names


def _read_by(cli: ModuleType) -> set[str]:
    args = cli._parser().parse_args(["serve"])
    settings = cli.settings_of(args)
    flags = [dest.replace("_", "-") for dest in vars(args) if dest != "command"]
    return {settings.env_name(flag) for flag in flags}


@pytest.mark.parametrize(
    ("command", "cli"),
    [
        ("uid2-operator serve", operator_cli),
        ("uid2-publisher serve", publisher_cli),
        ("uid2-ssp serve", ssp_cli),
        ("uid2-dsp serve", dsp_cli),
    ],
)
def test_every_variable_serve_reads_is_in_the_readme(command: str, cli: ModuleType) -> None:
    read = _read_by(cli)
    assert len(read) >= 5, read
    assert read <= _named(_row(command)), sorted(read - _named(_row(command)))


def test_the_operators_lifetime_variables_keep_their_seconds_suffix() -> None:
    names = _read_by(operator_cli)
    assert "UID2_OPERATOR_TOKEN_LIFETIME_S" in names and "UID2_OPERATOR_LISTEN" in names
    assert "UID2_SSP_BIDDERS" in _read_by(ssp_cli)
