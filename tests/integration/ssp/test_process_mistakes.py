"""`uid2-ssp serve` as a real process: a bad store is one line on stderr and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bad_stores import one_error_line, unusable_store
from tests.support.procs import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["garbage", "empty", "damaged", "directory", "file"])
def test_unusable_store_is_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    data_dir, named = unusable_store(tmp_path, "ssp.sqlite3", kind)
    r = run_cli(["uid2-ssp", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"])
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr, "uid2-ssp: ")
    assert str(named) in line and "does not exist" not in line
    if kind == "empty":  # a copy cut short: not started on as a new store with no accounts
        assert "empty file (0 bytes)" in line and named.stat().st_size == 0
