"""README's configuration table names every environment variable a `serve` command reads:
literally, or by the row's `UID2_<SERVICE>_<FLAG>` rule applied to a flag the row lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def _read_by(source: str) -> set[str]:
    text = (REPO / source).read_text("utf-8")
    names = set(re.findall(r'"(UID2_[A-Z0-9_]*[A-Z0-9])"', text))
    # The operator's CLI spells its variables without the prefix: ENV + "X", _env("X"),
    # pick(flag, "X", ...).
    suffixes = re.findall(r'(?:ENV \+ |_env\(|pick\(\s*[\w.]+,\s*)"([A-Z_]+)"', text)
    return names | {"UID2_OPERATOR_" + s for s in suffixes}


@pytest.mark.parametrize(
    ("command", "source", "not_serve"),
    [
        ("uid2-operator serve", "operator_svc/cli.py", {"UID2_OPERATOR_IDENTITY_SCOPE"}),
        ("uid2-ssp serve", "ssp_svc/cli.py", set()),
        ("uid2-dsp serve", "dsp_svc/cli.py", set()),
    ],
)
def test_every_variable_serve_reads_is_in_the_readme(
    command: str, source: str, not_serve: set[str]
) -> None:
    read = _read_by(source) - not_serve
    assert read, source
    assert read <= _named(_row(command)), sorted(read - _named(_row(command)))
