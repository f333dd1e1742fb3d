"""`uid2-publisher serve` flag / environment parsing; `backup` and `restore`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from publisher_svc.cli import _parser, main, parse_config
from publisher_svc.model import Identity, StorageMode
from publisher_svc.store import SqliteStore
from svc_common.cli_common import UsageError
from tests.support.bad_stores import one_error_line

FLAGS = [
    "serve", "--data-dir", "/tmp/x", "--listen", "127.0.0.1:0",
    "--operator-address", "127.0.0.1:5000", "--site-id", "7", "--ssp-address", "127.0.0.1:6000",
]  # fmt: skip


def test_environment_fallbacks_and_no_keys_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UID2_PUBLISHER_OPERATOR_API_KEY", "op-secret")
    monkeypatch.setenv("UID2_PUBLISHER_SSP_API_KEY", "ssp-secret")
    monkeypatch.setenv("UID2_PUBLISHER_STORAGE_MODE", "client")
    monkeypatch.setenv("UID2_PUBLISHER_ON_BEHALF_OF_SITE_ID", "42")
    monkeypatch.setenv("UID2_PUBLISHER_REFRESH_WORKERS", "3")
    config = parse_config(_parser().parse_args(FLAGS))
    assert config.operator_api_key == "op-secret" and config.ssp_api_key == "ssp-secret"
    assert config.storage_mode is StorageMode.CLIENT
    assert config.on_behalf_of_site_id == 42 and config.refresh_workers == 3
    assert config.site_id == 7 and config.background_refresh
    assert "secret" not in repr(config)


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UID2_PUBLISHER_SITE_ID", "9")
    args = _parser().parse_args(
        [*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s", "--no-background-refresh"]
    )
    config = parse_config(args)
    assert config.site_id == 7 and not config.background_refresh
    assert config.serve_refresh_budget_s == 0.3


def test_serve_refresh_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UID2_PUBLISHER_SERVE_REFRESH_BUDGET", "0.05")
    args = _parser().parse_args([*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s"])
    assert parse_config(args).serve_refresh_budget_s == 0.05
    args = _parser().parse_args(
        [*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s", "--serve-refresh-budget", "0"]
    )
    with pytest.raises(UsageError):
        parse_config(args)


def test_peer_call_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parser().parse_args([*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s"])
    config = parse_config(args)
    assert (config.operator_calls_max, config.ssp_calls_max) == (24, 24)
    monkeypatch.setenv("UID2_PUBLISHER_SSP_CALLS_MAX", "6")
    args = _parser().parse_args(
        [*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s", "--operator-calls-max", "5"]
    )
    config = parse_config(args)
    assert (config.operator_calls_max, config.ssp_calls_max) == (5, 6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--operator-api-key"),
        (["--operator-api-key", "k", "--ssp-api-key", "s", "--refresh-workers", "0"], "at least"),
        (["--operator-api-key", "k", "--ssp-api-key", "s", "--site-id", "x"], "integer"),
        # int32 in the protos: a larger one started fine and then failed every Login, INTERNAL
        (
            ["--operator-api-key", "k", "--ssp-api-key", "s", "--site-id", "2147483648"],
            "at most 2147483647",
        ),
        (
            ["--operator-api-key", "k", "--ssp-api-key", "s", "--on-behalf-of-site-id", "1e11"],
            "is not an integer",
        ),
        (
            [
                "--operator-api-key",
                "k",
                "--ssp-api-key",
                "s",
                "--on-behalf-of-site-id",
                "99999999999",
            ],
            "--on-behalf-of-site-id (or UID2_PUBLISHER_ON_BEHALF_OF_SITE_ID): must be at most",
        ),
        # Waited on as a timeout: a huge one would overflow time_t at the first due impression.
        (
            ["--operator-api-key", "k", "--ssp-api-key", "s", "--serve-refresh-budget", "1e10"],
            "at most 3600",
        ),
        (["--operator-api-key", "k", "--ssp-api-key", "s", "--ssp-timeout", "1e300"], "at most"),
        (["--operator-api-key", "k", "--ssp-api-key", "s", "--ssp-calls-max", "0"], "at least 1"),
        # Each slot gets a server thread.
        (
            ["--operator-api-key", "k", "--ssp-api-key", "s", "--operator-calls-max", "100000"],
            "at most 256",
        ),
    ],
)
def test_mistakes(monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str) -> None:
    for name in ("OPERATOR_API_KEY", "SSP_API_KEY"):
        monkeypatch.delenv("UID2_PUBLISHER_" + name, raising=False)
    with pytest.raises(UsageError) as exc:
        parse_config(_parser().parse_args([*FLAGS, *extra]))
    assert message in str(exc.value)


def test_a_data_dir_that_is_a_file_is_a_mistake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a_file = tmp_path / "publisher.sqlite3"
    a_file.write_bytes(b"")
    argv = [*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s"]
    args = _parser().parse_args(argv)
    args.data_dir = str(a_file)
    with pytest.raises(UsageError, match="--data-dir is not a directory"):
        parse_config(args)


@pytest.mark.parametrize(("text", "background"), [("YES", False), ("1", False), ("false", True)])
def test_no_background_refresh_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, background: bool
) -> None:
    monkeypatch.setenv("UID2_PUBLISHER_NO_BACKGROUND_REFRESH", text)
    args = _parser().parse_args([*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s"])
    assert parse_config(args).background_refresh is background


@pytest.mark.parametrize("value", ["maybe", "nope"])
def test_unclear_no_background_refresh_is_a_mistake(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("UID2_PUBLISHER_NO_BACKGROUND_REFRESH", value)
    args = _parser().parse_args([*FLAGS, "--operator-api-key", "k", "--ssp-api-key", "s"])
    with pytest.raises(UsageError, match="NO_BACKGROUND_REFRESH"):
        parse_config(args)


def test_backup_and_restore_keep_stored_identities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    live, backup, restored = tmp_path / "live", tmp_path / "pub.backup", tmp_path / "restored"
    store = SqliteStore(live)
    ident = Identity("A4tok", "rt-1", 3_000, 1_000, 30_000, "k")
    store.put_unless_site_optout("u1", "email:u1", ident, 1)
    store.close()
    monkeypatch.setenv("UID2_PUBLISHER_DATA_DIR", str(live))  # as `serve` reads it
    assert main(["backup", "--to", str(backup)]) == 0
    assert json.loads(capsys.readouterr().out)["backup"] == str(backup)
    assert main(["restore", "--data-dir", str(restored), "--from", str(backup)]) == 0
    again = SqliteStore(restored)
    try:
        stored = again.get("u1")
        assert stored is not None and stored.identity == ident
    finally:
        again.close()
    assert main(["backup", "--to", str(backup)]) == 2
    assert "already exists" in one_error_line(capsys.readouterr().err, "uid2-publisher: error: ")


def test_a_store_made_by_an_earlier_version_backs_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Back up before an upgrade: the tables a later version added may not be there yet."""
    SqliteStore(tmp_path / "old").close()
    db = sqlite3.connect(tmp_path / "old" / SqliteStore.FILE_NAME)
    db.execute("DROP TABLE ended_identities")  # as stores made before it existed
    db.close()
    backup = tmp_path / "b"
    assert main(["backup", "--data-dir", str(tmp_path / "old"), "--to", str(backup)]) == 0
    assert main(["restore", "--data-dir", str(tmp_path / "new"), "--from", str(backup)]) == 0
    SqliteStore(tmp_path / "new").close()  # and the publisher opens it, adding the table
