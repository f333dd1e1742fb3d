"""`uid2-ssp publisher add` in-process: a bad data dir or store file is one line on stderr naming
the path, exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssp_svc import cli
from tests.support.bad_stores import one_error_line, unusable_store


@pytest.mark.parametrize(
    "kind", ["garbage", "directory", "foreign", "unwritable", "file", "absent"]
)
def test_publisher_add_bad_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    data_dir, named = unusable_store(tmp_path, "ssp.sqlite3", kind, table="accounts")
    rc = cli.main(
        ["publisher", "add", "--data-dir", str(data_dir), "--name", "news", "--domain", "a.com"]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(named) in one_error_line(err, "uid2-ssp: ")
    assert not (tmp_path / "absent").exists()
