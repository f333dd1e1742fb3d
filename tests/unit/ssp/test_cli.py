"""`uid2-ssp publisher add` in-process: a bad data dir or store file is one line on stderr naming
the path, exit 2, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from publisher_svc import cli as publisher_cli
from publisher_svc.store import SqliteStore
from ssp_svc import cli
from ssp_svc.store.accounts import SqliteAccountStore
from tests.support.bad_stores import one_error_line, unusable_store
from tests.unit.ssp.support import fixed_clock


@pytest.mark.parametrize(
    "kind", ["garbage", "empty", "directory", "foreign", "unwritable", "file", "absent"]
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


def test_backup_and_restore_keep_every_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, backup, restored = tmp_path / "live", tmp_path / "ssp.backup", tmp_path / "restored"
    live.mkdir()
    assert (
        cli.main(["publisher", "add", "--data-dir", str(live), "--name", "n", "--app", "a.b"]) == 0
    )
    api_key = json.loads(capsys.readouterr().out)["api_key"]
    assert cli.main(["backup", "--data-dir", str(live), "--to", str(backup)]) == 0
    assert cli.main(["restore", "--data-dir", str(restored), "--from", str(backup)]) == 0
    store = SqliteAccountStore(restored, rng=os.urandom, clock=fixed_clock())
    try:
        account = store.authenticate(api_key)
        assert account is not None and account.name == "n"
    finally:
        store.close()
    capsys.readouterr()
    # A publisher's backup is not an SSP's: refused, one line, nothing left behind.
    other, pub_backup = tmp_path / "pub", tmp_path / "pub.backup"
    SqliteStore(other).close()
    assert publisher_cli.main(["backup", "--data-dir", str(other), "--to", str(pub_backup)]) == 0
    assert cli.main(["restore", "--data-dir", str(tmp_path / "x"), "--from", str(pub_backup)]) == 2
    err = capsys.readouterr().err
    assert "not a store of the SSP" in one_error_line(err, "uid2-ssp: error: ")
    assert not (tmp_path / "x").exists()


def test_serve_with_both_account_sources_names_where_each_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: UID2_SSP_DATA_DIR set for the admin commands and --publishers-file typed read
    "give exactly one of --data-dir and --publishers-file", though only one flag was given."""
    monkeypatch.setenv("UID2_SSP_DATA_DIR", str(tmp_path))
    rc = cli.main(
        ["serve", "--publishers-file", str(tmp_path / "p.json"), "--listen", "127.0.0.1:0"]
    )
    line = one_error_line(capsys.readouterr().err, "uid2-ssp: ")
    assert rc == 2
    assert "UID2_SSP_DATA_DIR" in line and "UID2_SSP_PUBLISHERS_FILE" in line
