"""`uid2-operator` in-process: a bad store or data dir is one line on stderr and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from operator_svc import cli
from tests.support.bad_stores import one_error_line, unusable_store


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Runs the CLI; asserts exit 2 with exactly one stderr line, which it returns."""
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    return one_error_line(err, "uid2-operator: error: ")


@pytest.mark.parametrize("command", [["init"], ["client", "list"], ["serve"]])
@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("garbage", "file is not a database"),
        ("directory", "is not a regular file"),
        ("foreign", ""),
        ("unwritable", ""),
        ("file", "is not a directory"),
        ("uncreatable", ""),
    ],
)
def test_unusable_store(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    kind: str,
    problem: str,
) -> None:
    data_dir, named = unusable_store(tmp_path, "operator.sqlite3", kind)
    extra = ["--listen", "127.0.0.1:0"] if command == ["serve"] else []
    line = _fails(capsys, *command, "--data-dir", str(data_dir), *extra)
    assert str(named if problem else data_dir) in line and problem in line


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("foreign", "cannot be used: no such column"),
        ("unwritable", "/proc/self/operator.sqlite3 cannot be opened"),
        ("uncreatable", "data dir /proc/nonexistent/data cannot be created"),
    ],
)
def test_init_says_what_is_wrong_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, problem: str
) -> None:
    data_dir, _ = unusable_store(tmp_path, "operator.sqlite3", kind)
    line = _fails(capsys, "init", "--data-dir", str(data_dir))
    assert problem in line and str(data_dir) in line
