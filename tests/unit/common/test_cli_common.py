"""Where a `serve` setting comes from, for all four services: the flag, else its environment
variable, else the default; a bad value from either place is one line naming both."""

from __future__ import annotations

import argparse

import pytest

from svc_common.cli_common import FlagsWithEnv, OneLineParser, UsageError
from svc_common.settings import integer, integer_in


def _settings(**flags: object) -> FlagsWithEnv:
    return FlagsWithEnv(argparse.Namespace(**flags), "UID2_T_", {"tick": "UID2_T_TICK_S"})


def test_flag_then_variable_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UID2_T_MAX_ITEMS", "7")
    assert _settings(max_items="3").value("max-items", integer, 1) == 3
    assert _settings(max_items=None).value("max-items", integer, 1) == 7
    monkeypatch.delenv("UID2_T_MAX_ITEMS")
    assert _settings(max_items=None).value("max-items", integer, 1) == 1


def test_an_explicit_zero_is_not_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(max_items="0").value("max-items", integer, 5) == 0
    monkeypatch.setenv("UID2_T_MAX_ITEMS", "0")
    assert _settings(max_items=None).value("max-items", integer, 5) == 0


def test_empty_counts_as_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UID2_T_NAME", "from-env")
    assert _settings(name="").text("name") == "from-env"
    monkeypatch.setenv("UID2_T_NAME", "")
    assert _settings(name=None).text("name", "dflt") == "dflt"
    with pytest.raises(UsageError, match=r"^--name \(or UID2_T_NAME\) is required$"):
        _settings(name=None).required("name")


def test_a_named_variable_replaces_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UID2_T_TICK_S", "9")
    monkeypatch.setenv("UID2_T_TICK", "1")
    assert _settings(tick=None).value("tick", integer, 0) == 9


@pytest.mark.parametrize(("flag", "env"), [("x", None), (None, "x")])
def test_a_bad_value_names_the_flag_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, flag: str | None, env: str | None
) -> None:
    if env is not None:
        monkeypatch.setenv("UID2_T_MAX_ITEMS", env)
    with pytest.raises(UsageError) as exc:
        _settings(max_items=flag).value("max-items", integer, 1)
    assert str(exc.value) == "--max-items (or UID2_T_MAX_ITEMS): 'x' is not an integer"


def test_required_value_parses() -> None:
    assert _settings(n="4").required_value("n", integer_in(1)) == 4
    with pytest.raises(UsageError, match="must be at least 1, got 0"):
        _settings(n="0").required_value("n", integer_in(1))


def test_parser_mistakes_are_one_line_usage_errors() -> None:
    parser = OneLineParser(prog="t")
    parser.add_argument("--n", type=int)
    with pytest.raises(UsageError, match="argument --n: invalid int value"):
        parser.parse_args(["--n", "x"])


KEY = "UID2-C-5df286e82ed2-EyqnvHZVUCGt5WRH3ThSU39J3Xd3OrM829Ji37Ic_cg"


@pytest.mark.parametrize(
    "argv",
    [
        ["--operator-key", KEY],  # a misspelt flag: argparse repeats it and its value
        [f"--api-key={KEY}"],
        [KEY],  # a stray argument
        ["--n", "1", "--email", "alice@example.com"],
        ["--verb", "alice@example.com"],  # an invalid choice
        ["--publisher-file", "+1 (206) 555-7781"],  # one argument, three words once joined
        ["--phne=+1 (206) 555-7781"],  # the same, after a flag's "=" (mutation review)
        ["--verb", "206 555 7781"],
    ],
)
def test_parser_mistakes_never_repeat_a_secret_or_dii(argv: list[str]) -> None:
    """Review: README promises a key or an email given to the wrong flag is not repeated, but
    argparse's own messages (unknown arguments, invalid choices) quoted it whole."""
    parser = OneLineParser(prog="t")
    parser.add_argument("--n", type=int)
    parser.add_argument("--verb", choices=["add", "list"])
    with pytest.raises(UsageError) as exc:
        parser.parse_args(argv)
    message = str(exc.value)
    assert KEY not in message and "alice@example.com" not in message
    assert "555" not in message
    assert "not repeated" in message
    assert "--operator-key" in message or "--verb" in message or "unrecognized" in message


def test_parser_mistakes_still_name_what_is_wrong() -> None:
    parser = OneLineParser(prog="t")
    parser.add_argument("--verb", choices=["add", "list"])
    with pytest.raises(UsageError, match=r"unrecognized arguments: --colour blue$"):
        parser.parse_args(["--colour", "blue"])
    with pytest.raises(UsageError, match=r"invalid choice: 'remove' \(choose from"):
        parser.parse_args(["--verb", "remove"])


def test_an_address_given_by_mistake_is_named() -> None:
    """Its digits are no phone number: hiding it left the user unable to tell what was wrong."""
    parser = OneLineParser(prog="t")
    with pytest.raises(UsageError, match=r"unrecognized arguments: 127\.0\.0\.1:50071$"):
        parser.parse_args(["127.0.0.1:50071"])
