"""`serve --rotate-keys-every` and `--rotate-salts-daily-fraction`: read from the flag or its
variable, off by default, and a value out of range is one line naming both, exit 2, before
anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from operator_svc import cli
from operator_svc.config import MAX_ROTATE_KEYS_EVERY_S
from tests.support.bad_stores import one_error_line

KEYS_VAR = "UID2_OPERATOR_ROTATE_KEYS_EVERY_S"
SALTS_VAR = "UID2_OPERATOR_ROTATE_SALTS_DAILY_FRACTION"


def _config(*argv: str) -> tuple[int, float]:
    config = cli.serve_config(cli._parser().parse_args(["serve", "--data-dir", "d", *argv]))
    return config.rotate_keys_every_s, config.rotate_salts_daily_fraction


def test_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEYS_VAR, raising=False)
    monkeypatch.delenv(SALTS_VAR, raising=False)
    assert _config() == (0, 0.0)
    assert _config("--rotate-keys-every", "0", "--rotate-salts-daily-fraction", "0") == (0, 0.0)


def test_from_the_flags_or_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _config("--rotate-keys-every", "86400", "--rotate-salts-daily-fraction", "0.00274") == (
        86_400,
        0.00274,
    )
    monkeypatch.setenv(KEYS_VAR, "172800")
    monkeypatch.setenv(SALTS_VAR, "1")
    assert _config() == (172800, 1.0)
    # A flag wins over its variable, as for every setting.
    assert _config("--rotate-keys-every", "86400") == (86400, 1.0)
    assert _config("--rotate-keys-every", str(MAX_ROTATE_KEYS_EVERY_S))[0] == (
        MAX_ROTATE_KEYS_EVERY_S
    )


@pytest.mark.parametrize("from_env", [False, True], ids=["flag", "env"])
@pytest.mark.parametrize(
    ("flag", "variable", "value", "problem"),
    [
        ("rotate-keys-every", KEYS_VAR, "60",
         f"must be 0 (off) or within 86400 and {MAX_ROTATE_KEYS_EVERY_S} seconds (a day to the "
         "key lifetime less 30 days), got 60"),
        ("rotate-keys-every", KEYS_VAR, str(365 * 86_400), "got 31536000"),
        ("rotate-keys-every", KEYS_VAR, "-3600", "got -3600"),
        ("rotate-keys-every", KEYS_VAR, "1h", "'1h' is not an integer"),
        ("rotate-salts-daily-fraction", SALTS_VAR, "1.5",
         "must be above 0 and at most 1 (0 or unset: off), got 1.5"),
        ("rotate-salts-daily-fraction", SALTS_VAR, "-0.1", "got -0.1"),
        ("rotate-salts-daily-fraction", SALTS_VAR, "nan", "'nan' is not a finite number"),
        ("rotate-salts-daily-fraction", SALTS_VAR, "1/365", "'1/365' is not a number"),
    ],
)  # fmt: skip
def test_out_of_range_is_one_line_naming_flag_and_variable(
    flag: str,
    variable: str,
    value: str,
    problem: str,
    from_env: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["serve", "--data-dir", str(tmp_path)]
    if from_env:
        monkeypatch.setenv(variable, value)
    else:
        argv.append(f"--{flag}={value}")
    assert cli.main(argv) == 2
    prefix = "uid2-operator: error: "
    line = one_error_line(capsys.readouterr().err, prefix).removeprefix(prefix)
    assert line.startswith(f"--{flag} (or {variable}): "), line
    assert line.endswith(problem), line
