"""`uid2-ssp publisher add` in-process: a bad data dir or store file is one line on stderr naming
the path, exit 2, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from publisher_svc import cli as publisher_cli
from publisher_svc.store import SqliteStore
from publisher_svc.store import StoreError as PublisherStoreError
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


def _tables(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_store_of_the_other_service_copied_into_place_is_refused_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve` (and every command) added its own tables beside another service's, where
    `restore` refused that file (misconfiguration review: an operator backup copied into
    place as publisher.sqlite3 / ssp.sqlite3)."""
    pub_dir, ssp_dir = tmp_path / "pub", tmp_path / "ssp"
    SqliteStore(pub_dir).close()
    ssp_dir.mkdir()
    copied = ssp_dir / "ssp.sqlite3"
    shutil.copy(pub_dir / SqliteStore.FILE_NAME, copied)
    # As a backup is: not in WAL mode, which a refused open turned it to (diff review).
    with contextlib.closing(sqlite3.connect(copied)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    before = copied.read_bytes()
    rc = cli.main(["publisher", "add", "--data-dir", str(ssp_dir), "--name", "n", "--app", "a.b"])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "uid2-ssp: ")
    assert "not a store of the SSP" in line and "no accounts table" in line
    assert copied.read_bytes() == before

    ssp_store = tmp_path / "ssp2"
    SqliteAccountStore(ssp_store, rng=os.urandom, clock=fixed_clock(), create=True).close()
    shutil.copy(ssp_store / "ssp.sqlite3", pub_dir / SqliteStore.FILE_NAME)
    for suffix in ("-wal", "-shm"):
        (pub_dir / (SqliteStore.FILE_NAME + suffix)).unlink(missing_ok=True)
    tables = _tables(pub_dir / SqliteStore.FILE_NAME)
    with pytest.raises(PublisherStoreError, match="not a store of the publisher"):
        SqliteStore(pub_dir)
    assert _tables(pub_dir / SqliteStore.FILE_NAME) == tables


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


def _bidders_from_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str
) -> list[tuple[str, str]]:
    monkeypatch.setenv("UID2_SSP_BIDDERS", listed)
    args = cli._parser().parse_args(["serve", "--data-dir", str(tmp_path)])
    config = cli._config(cli.settings_of(args), args.bidder)
    return [(bidder.name, bidder.address) for bidder in config.bidders]


def test_the_bidders_variable_keeps_a_bidders_own_address_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left by the misconfiguration review: the variable was split at every comma, so a bidder
    behind an `ipv4:` list (which --bidder takes) was refused as "must be NAME=HOST:PORT"."""
    # A space after a comma, within a bidder's list or between bidders, is no part of either.
    listed = "dsp-a=ipv4:10.0.0.1:9000, 10.0.0.2:9000, dsp-b=127.0.0.1:9003,"
    assert _bidders_from_variable(tmp_path, monkeypatch, listed) == [
        ("dsp-a", "ipv4:10.0.0.1:9000,10.0.0.2:9000"),
        ("dsp-b", "127.0.0.1:9003"),
    ]


def test_the_bidders_variable_still_refuses_an_address_without_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UID2_SSP_BIDDERS", "127.0.0.1:9003,dsp-b=127.0.0.1:9004")
    rc = cli.main(["serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"])
    line = one_error_line(capsys.readouterr().err, "uid2-ssp: ")
    assert rc == 2
    assert "UID2_SSP_BIDDERS" in line and "NAME=HOST:PORT" in line


def test_a_bidder_named_twice_is_named_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deployment review: "bidder names must be unique" named neither the bidder nor where the
    list came from."""
    monkeypatch.setenv(
        "UID2_SSP_BIDDERS", "dsp-a=127.0.0.1:9001,dsp-b=127.0.0.1:9002,dsp-a=127.0.0.1:9003"
    )
    rc = cli.main(["serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"])
    line = one_error_line(capsys.readouterr().err, "uid2-ssp: ")
    assert rc == 2
    assert "dsp-a given more than once" in line and "UID2_SSP_BIDDERS" in line
