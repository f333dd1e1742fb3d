"""`python -m demo` answers --help and refuses arguments instead of running the whole demo."""

from __future__ import annotations

import pytest

from demo import __main__ as demo_main


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_is_the_usage_not_a_run(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main._cli([flag]) == 0
    assert "DATA_DIR" in capsys.readouterr().out


def test_an_argument_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main._cli(["--fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo: error: takes no arguments") and err.count("\n") == 1
