"""`uid2-dsp serve`'s settings: what a flag does, its UID2_DSP_* variable does too, and a
mistake either way is one line on stderr, exit 2."""

from __future__ import annotations

from typing import NoReturn

import pytest

from dsp_svc import cli
from dsp_svc.config import DspConfig, Mode


def _config(argv: list[str]) -> DspConfig:
    return cli._config(cli.settings_of(cli._parser().parse_args(["serve", *argv])))


@pytest.mark.parametrize("from_env", [False, True], ids=["flags", "env"])
def test_mode_and_fail_rate_combine_either_way(
    from_env: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both apply (bidding.py: the delay, then the share of errors), from flags as from the
    # environment; the command line used to refuse what the environment accepted.
    argv = ["--name", "d"]
    if from_env:
        monkeypatch.setenv("UID2_DSP_MODE", "slow")
        monkeypatch.setenv("UID2_DSP_FAIL_RATE", "0.5")
    else:
        argv += ["--mode", "slow", "--fail-rate", "0.5"]
    config = _config(argv)
    assert (config.mode, config.fail_rate, config.effective_delay_ms) == (Mode.SLOW, 0.5, 1000)


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--mode", "fail", "--fail-rate", "0.5"], {}),
        ([], {"UID2_DSP_MODE": "fail", "UID2_DSP_FAIL_RATE": "0.5"}),
        (["--fail-rate", "0.5"], {"UID2_DSP_MODE": "fail"}),
    ],
    ids=["flags", "env", "mixed"],
)
def test_a_fail_rate_with_mode_fail_is_refused_either_way(
    flags: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every call fails in that mode, so the share would be silently ignored.
    monkeypatch.setattr("svc_common.metrics.wait_for_signal", _never)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", "--name", "d", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("uid2-dsp: error: --fail-rate (or UID2_DSP_FAIL_RATE) has no effect "
                          "with --mode fail (or UID2_DSP_MODE=fail)"), err  # fmt: skip


def _never(*_: object) -> NoReturn:
    raise AssertionError("the DSP started serving")


@pytest.mark.parametrize("name", ["Alice.Example@example.com", "+14155550123", "", "   "])
def test_a_dsp_name_that_could_be_dii_is_refused(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The name is logged and sent as every bid's seat: an account's name rule.
    monkeypatch.setattr("svc_common.metrics.wait_for_signal", _never)
    assert cli.main(["serve", "--name", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("uid2-dsp: error: --name"), err
    assert "example.com" not in err and "4155550123" not in err
