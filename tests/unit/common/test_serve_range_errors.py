"""A `serve` setting out of its range is refused like one that does not parse: one line on
stderr, exit 2, naming the flag and its variable (README, Configuration), whichever of the two
gave it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from dsp_svc import cli as dsp_cli
from operator_svc import cli as operator_cli
from ssp_svc import cli as ssp_cli

Main = Callable[[Sequence[str] | None], int]


def _ssp(tmp_path: Path) -> list[str]:
    return ["serve", "--data-dir", str(tmp_path)]


def _dsp(tmp_path: Path) -> list[str]:
    return ["serve", "--name", "d"]


def _operator(tmp_path: Path) -> list[str]:
    return ["serve", "--data-dir", str(tmp_path)]


CASES = [
    (ssp_cli.main, _ssp, "UID2_SSP_", "key-refresh-s", "0"),
    (ssp_cli.main, _ssp, "UID2_SSP_", "key-refresh-s", "86401"),
    (ssp_cli.main, _ssp, "UID2_SSP_", "tmax-ms", "0"),
    (ssp_cli.main, _ssp, "UID2_SSP_", "stream-buffer", "0"),
    (ssp_cli.main, _ssp, "UID2_SSP_", "stream-buffer", "65537"),
    (ssp_cli.main, _ssp, "UID2_SSP_", "listen", "nonsense"),
    (ssp_cli.main, _ssp, "UID2_SSP_", "bidder", "no-address"),
    (ssp_cli.main, _ssp, "UID2_SSP_", "operator", "nonsense"),
    (dsp_cli.main, _dsp, "UID2_DSP_", "operator", "nonsense"),
    (dsp_cli.main, _dsp, "UID2_DSP_", "key-refresh-s", "0.5"),
    (dsp_cli.main, _dsp, "UID2_DSP_", "delay-ms", "-5"),
    (dsp_cli.main, _dsp, "UID2_DSP_", "fail-rate", "2"),
    (dsp_cli.main, _dsp, "UID2_DSP_", "base-price", "-1"),
    (dsp_cli.main, _dsp, "UID2_DSP_", "identified-bonus", "-1"),
    (dsp_cli.main, _dsp, "UID2_DSP_", "listen", "nonsense"),
    (operator_cli.main, _operator, "UID2_OPERATOR_", "listen", "nonsense"),
    (operator_cli.main, _operator, "UID2_OPERATOR_", "http-listen", "nonsense"),
]


@pytest.mark.parametrize("from_env", [False, True], ids=["flag", "env"])
@pytest.mark.parametrize(("main", "base", "prefix", "flag", "value"), CASES)
def test_an_out_of_range_setting_names_the_flag_and_its_variable(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    flag: str,
    value: str,
    from_env: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    variable = "UID2_SSP_BIDDERS" if flag == "bidder" else prefix + flag.upper().replace("-", "_")
    argv = base(tmp_path)
    if from_env:
        monkeypatch.setenv(variable, value)
    else:
        argv += [f"--{flag}={value}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f": error: --{flag} (or {variable}): " in err, err


@pytest.mark.parametrize(
    ("flag", "variable", "value"),
    [
        ("sync-interval", "UID2_OPERATOR_SYNC_INTERVAL_S", "2"),
        ("allow-clock-skew", "UID2_OPERATOR_ALLOW_CLOCK_SKEW_S", "-1"),
        ("token-lifetime", "UID2_OPERATOR_TOKEN_LIFETIME_S", "0"),
        ("refresh-lifetime", "UID2_OPERATOR_REFRESH_LIFETIME_S", "0"),
        ("refresh-from", "UID2_OPERATOR_REFRESH_FROM_S", "0"),
    ],
)
def test_the_operators_own_ranges_name_the_flag_and_its_variable(
    flag: str,
    variable: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert operator_cli.main(["serve", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f": error: --{flag} (or {variable}): " in err, err


@pytest.mark.parametrize("from_env", [False, True], ids=["flag", "env"])
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"refresh-from": "7200", "token-lifetime": "3600"},
         "--refresh-from (or UID2_OPERATOR_REFRESH_FROM_S) must not exceed --token-lifetime "
         "(or UID2_OPERATOR_TOKEN_LIFETIME_S) (7200 s > 3600 s)"),
        # The limit a default: still named, with the value in force.
        ({"refresh-from": "260000"},
         "--refresh-from (or UID2_OPERATOR_REFRESH_FROM_S) must not exceed --token-lifetime "
         "(or UID2_OPERATOR_TOKEN_LIFETIME_S) (260000 s > 259200 s)"),
        ({"token-lifetime": "100", "refresh-lifetime": "50"},
         "--token-lifetime (or UID2_OPERATOR_TOKEN_LIFETIME_S) must not exceed "
         "--refresh-lifetime (or UID2_OPERATOR_REFRESH_LIFETIME_S) (100 s > 50 s)"),
        ({"token-lifetime": "7200", "max-bidstream-lifetime": "5000"},
         "--token-lifetime (or UID2_OPERATOR_TOKEN_LIFETIME_S) must not exceed "
         "--max-bidstream-lifetime (or UID2_OPERATOR_MAX_BIDSTREAM_LIFETIME_S) "
         "(7200 s > 5000 s)"),
    ],
    ids=["refresh-from", "refresh-from-default-limit", "refresh-lifetime", "bidstream"],
)  # fmt: skip
def test_clashing_lifetimes_name_both_flags_and_variables(
    given: dict[str, str],
    expected: str,
    from_env: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # They said "refresh from must not exceed the token lifetime", naming neither setting.
    argv = ["serve", "--data-dir", str(tmp_path)]
    for flag, value in given.items():
        if from_env:
            monkeypatch.setenv(f"UID2_OPERATOR_{flag.upper().replace('-', '_')}_S", value)
        else:
            argv.append(f"--{flag}={value}")
    assert operator_cli.main(argv) == 2
    assert capsys.readouterr().err == f"uid2-operator: error: {expected}\n"
