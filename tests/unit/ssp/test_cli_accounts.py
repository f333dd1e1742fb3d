"""`uid2-ssp publisher|subscriber add/list/disable/enable` in-process: --data-dir falls back to
UID2_SSP_DATA_DIR, `list` never shows a key's secret part or hash, a disabled key is refused
(also by a store opened before the disable, as a serving SSP's is), and stores made before
accounts could be disabled keep working."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ssp_svc import cli
from ssp_svc.store import accounts as accounts_module
from ssp_svc.store.accounts import AccountKind, SqliteAccountStore
from svc_common import sqlite_db
from svc_common.clock import ManualClock
from svc_common.sqlite_db import StoreWriteFailed
from tests.support.closed_stdout import RefusingStdout

T0 = 1_800_000_000_000


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("uid2-ssp: error: "), err
    assert "Traceback" not in err
    return err


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize(
    "argv",
    [
        ["publisher", "add", "--name", "n", "--domain", "a.com"],
        ["subscriber", "add", "--name", "s"],
        ["publisher", "list"],
        ["subscriber", "disable", "--name", "s"],
    ],
)
def test_data_dir_falls_back_to_its_variable(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    monkeypatch.delenv("UID2_SSP_DATA_DIR", raising=False)
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    assert "--data-dir (or UID2_SSP_DATA_DIR) is required" in _one_error(err)

    monkeypatch.setenv("UID2_SSP_DATA_DIR", str(tmp_path))
    # list and disable need a store to exist; `subscriber add` makes it and names "s".
    assert _run(capsys, "subscriber", "add", "--name", "s")[0] == 0
    rc, _, err = _run(capsys, *argv)
    if argv[:2] == ["subscriber", "add"]:  # the name is taken now: the store was found
        assert rc == 2 and "already exists" in _one_error(err)
    else:
        assert rc == 0, err
    assert (tmp_path / "ssp.sqlite3").is_file()


def test_help_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    for noun in ("publisher", "subscriber"):
        for verb in ("add", "list", "disable", "enable"):
            with pytest.raises(SystemExit):
                cli.main([noun, verb, "--help"])
            assert "UID2_SSP_DATA_DIR" in capsys.readouterr().out


def test_list_shows_accounts_without_their_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    rc, out, _ = _run(capsys, "publisher", "add", "--data-dir", d, "--name", "news",
                      "--domain", "news.example.com", "--app", "com.news")  # fmt: skip
    pub_key = json.loads(out)["api_key"]
    rc, out, _ = _run(capsys, "subscriber", "add", "--data-dir", d, "--name", "analytics")
    sub_key = json.loads(out)["api_key"]

    rc, out, _ = _run(capsys, "publisher", "list", "--data-dir", d)
    assert rc == 0
    [pub] = _lines(out)
    key_id = pub_key.removeprefix("UID2-SSP-").split(".")[0]
    assert pub == {
        "name": "news",
        "kind": "publisher",
        "domains": ["news.example.com"],
        "apps": ["com.news"],
        "key_id": key_id,
        "disabled": False,
        "created": pub["created"],
    }
    assert isinstance(pub["created"], int) and pub["created"] > T0 // 2
    rc, out, _ = _run(capsys, "subscriber", "list", "--data-dir", d)
    [sub] = _lines(out)
    assert sub["name"] == "analytics" and sub["kind"] == "subscriber" and "domains" not in sub

    with sqlite3.connect(tmp_path / "ssp.sqlite3") as db:
        hashes = [bytes(r[0]) for r in db.execute("SELECT key_hash FROM accounts")]
    listed = _run(capsys, "publisher", "list", "--data-dir", d)[1]
    listed += _run(capsys, "subscriber", "list", "--data-dir", d)[1]
    for key in (pub_key, sub_key):
        assert key.split(".")[1] not in listed
    for h in hashes:
        assert h.hex() not in listed.lower()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EPIPE, None])  # None: `>&-`
def test_an_account_whose_key_cannot_be_printed_is_not_saved(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    code: int | None,
) -> None:
    # `publisher add > /dev/full` or `| true`: a live key nobody saw would be left behind.
    d = str(tmp_path)
    assert _run(capsys, "subscriber", "add", "--data-dir", d, "--name", "seen")[0] == 0
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", None if code is None else RefusingStdout(code))
        rc, _, err = _run(capsys, "publisher", "add", "--data-dir", d, "--name", "unseen",
                          "--domain", "a.example.com")  # fmt: skip
        assert rc == 2
        assert "nothing was saved" in _one_error(err)
        rc, _, err = _run(capsys, "subscriber", "list", "--data-dir", d)  # not a traceback
        assert rc == 2 and _one_error(err)
    rc, out, _ = _run(capsys, "publisher", "list", "--data-dir", d)
    assert (rc, out) == (0, "")


def test_a_key_printed_before_a_failed_commit_is_said_to_be_void(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sqlite_db.write_transaction

    @contextlib.contextmanager
    def failing_commit(*args: Any) -> Iterator[sqlite3.Connection]:
        with real(*args) as conn:
            before = conn.total_changes
            yield conn
            if conn.total_changes > before:  # the account's insert, not opening's checks
                raise StoreWriteFailed("database or disk is full")

    monkeypatch.setattr(accounts_module, "write_transaction", failing_commit)
    rc, out, err = _run(capsys, "subscriber", "add", "--data-dir", str(tmp_path), "--name", "v")
    assert rc == 2 and json.loads(out)["name"] == "v"  # printed, then the commit failed
    assert "printed above was not saved and does not work" in _one_error(err)
    monkeypatch.undo()
    assert _run(capsys, "subscriber", "list", "--data-dir", str(tmp_path))[1] == ""


def test_list_and_disable_refuse_a_dir_without_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["publisher", "list"], ["publisher", "disable", "--name", "n"]):
        rc, out, err = _run(capsys, *argv, "--data-dir", str(tmp_path))
        assert rc == 2 and out == ""
        assert "holds no SSP store" in _one_error(err)
    assert list(tmp_path.iterdir()) == []


def test_disable_and_enable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    key = json.loads(_run(capsys, "subscriber", "add", "--data-dir", d, "--name", "s")[1])[
        "api_key"
    ]
    # A store opened before the disable, holding the key in its cache: a serving SSP's.
    serving = SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    try:
        assert serving.authenticate(key) is not None
        rc, out, _ = _run(capsys, "subscriber", "disable", "--data-dir", d, "--name", "s")
        assert rc == 0 and json.loads(out) == {
            "name": "s",
            "kind": "subscriber",
            "disabled": True,
        }
        assert serving.authenticate(key) is None
        assert _lines(_run(capsys, "subscriber", "list", "--data-dir", d)[1])[0]["disabled"]
        # Again is no mistake: the key stays refused.
        assert _run(capsys, "subscriber", "disable", "--data-dir", d, "--name", "s")[0] == 0
        assert serving.authenticate(key) is None
        assert _run(capsys, "subscriber", "enable", "--data-dir", d, "--name", "s")[0] == 0
        account = serving.authenticate(key)
        assert account is not None and account.name == "s"
    finally:
        serving.close()


def test_disable_names_only_an_account_of_its_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert _run(capsys, "subscriber", "add", "--data-dir", d, "--name", "s")[0] == 0
    rc, out, err = _run(capsys, "publisher", "disable", "--data-dir", d, "--name", "s")
    assert rc == 2 and out == ""
    assert "no publisher named 's'" in _one_error(err)
    assert _lines(_run(capsys, "subscriber", "list", "--data-dir", d)[1])[0]["disabled"] is False


def test_disable_in_the_same_process_is_seen_at_once(tmp_path: Path) -> None:
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    try:
        _, key = store.add("n", AccountKind.PUBLISHER, ("a.com",))
        assert store.authenticate(key) is not None
        store.set_disabled(AccountKind.PUBLISHER, "n", disabled=True)
        assert store.authenticate(key) is None
        [listed] = store.listing(AccountKind.PUBLISHER)
        assert listed.disabled and listed.created_ms == T0
    finally:
        store.close()


# The accounts table as stores made before `disable` have it.
_OLD_SCHEMA = """
CREATE TABLE accounts (
    key_id     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    salt       BLOB NOT NULL,
    key_hash   BLOB NOT NULL,
    domains    TEXT NOT NULL,
    apps       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (kind, name)
);
"""


def test_a_store_made_before_disable_keeps_working(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its one account as the old `publisher add` wrote it (hash of the key with its salt).
    key, salt = "UID2-SSP-00aa00aa00aa00aa.c2VjcmV0", b"s" * 16
    with sqlite3.connect(tmp_path / "ssp.sqlite3") as db:
        db.executescript(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("00aa00aa00aa00aa", "old", "publisher", salt,
             hashlib.sha256(salt + key.encode()).digest(), '["a.com"]', "[]", T0),
        )  # fmt: skip
    db.close()
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    try:
        account = store.authenticate(key)
        assert account is not None and account.name == "old"
    finally:
        store.close()
    d = str(tmp_path)
    [listed] = _lines(_run(capsys, "publisher", "list", "--data-dir", d)[1])
    assert listed["name"] == "old" and listed["disabled"] is False
    assert _run(capsys, "publisher", "disable", "--data-dir", d, "--name", "old")[0] == 0
    assert _run(capsys, "publisher", "add", "--data-dir", d, "--name", "new",
                "--app", "com.x")[0] == 0  # fmt: skip
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    try:
        assert store.authenticate(key) is None
    finally:
        store.close()


def test_someone_elses_accounts_table_is_not_altered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(tmp_path / "ssp.sqlite3") as db:
        db.execute("CREATE TABLE accounts (x)")
    db.close()
    rc, out, err = _run(capsys, "publisher", "list", "--data-dir", str(tmp_path))
    assert rc == 2 and out == ""
    assert "its accounts table is not the SSP's" in _one_error(err)
    with sqlite3.connect(tmp_path / "ssp.sqlite3") as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(accounts)")]
    db.close()
    assert columns == ["x"]


def test_a_key_printed_before_a_stop_signal_is_said_to_be_void(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sqlite_db.write_transaction

    @contextlib.contextmanager
    def stopped_before_commit(*args: Any) -> Iterator[sqlite3.Connection]:
        with real(*args) as conn:
            before = conn.total_changes
            yield conn
            if conn.total_changes > before:  # the account's insert, not opening's checks
                raise KeyboardInterrupt

    monkeypatch.setattr(accounts_module, "write_transaction", stopped_before_commit)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["subscriber", "add", "--data-dir", str(tmp_path), "--name", "s"])
    out, err = capsys.readouterr()
    assert json.loads(out)["name"] == "s"
    assert "printed above was not saved and does not work" in err
    monkeypatch.undo()
    assert _run(capsys, "subscriber", "list", "--data-dir", str(tmp_path))[1] == ""


def test_a_stop_signal_while_the_store_closes_after_the_commit_voids_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The close (a checkpoint, an fsync) comes after the commit: the key printed is saved.
    real = SqliteAccountStore.close

    def stopped_while_closing(self: SqliteAccountStore) -> None:
        real(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(SqliteAccountStore, "close", stopped_while_closing)
    # Done, and said so: exit 0, not "stopped before it finished", which a script would retry.
    assert cli.main(["subscriber", "add", "--data-dir", str(tmp_path), "--name", "kept"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["name"] == "kept" and err == ""
    monkeypatch.undo()
    assert (
        json.loads(_run(capsys, "subscriber", "list", "--data-dir", str(tmp_path))[1])["name"]
        == "kept"
    )
