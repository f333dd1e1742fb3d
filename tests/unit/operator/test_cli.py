"""`uid2-operator` in-process: a bad store, data dir or number is one line on stderr and exit 2,
and a rejected `keys rotate` leaves every key where it was."""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from operator_svc import admin, cli
from operator_svc.config import OperatorConfig
from operator_svc.server import create_server
from operator_svc.store import KeyRow, OperatorStore
from ssp_svc import cli as ssp_cli
from svc_common import sqlite_db
from tests.support.bad_stores import one_error_line, unusable_store
from tests.support.closed_stdout import RefusingStdout
from uid2_crypto.salts import BUCKET_COUNT


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Runs the CLI; asserts exit 2 with exactly one stderr line, which it returns."""
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    return one_error_line(err, "uid2-operator: error: ")


@pytest.fixture
def initialised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "op"
    assert cli.main(["init", "--data-dir", str(d)]) == 0
    capsys.readouterr()
    return d


def test_init_on_a_store_of_a_newer_schema_is_refused_not_reported_done(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = sqlite3.connect(initialised / "operator.sqlite3")
    with conn:
        conn.execute("UPDATE meta SET v = 2 WHERE k = 'schema_version'")
    conn.close()
    line = _fails(capsys, "init", "--data-dir", str(initialised))
    assert "schema version 2, not 1" in line
    # Every other command says so too (upgrade review: they said "not initialised or has
    # another schema", a backup "not an initialised operator store of schema version 1").
    d = str(initialised)
    for command in (
        ["serve", "--data-dir", d, "--listen", "127.0.0.1:0"],
        ["client", "list", "--data-dir", d],
        ["keys", "rotate", "--data-dir", d],
        ["backup", "--data-dir", d, "--to", str(initialised.parent / "copy")],
    ):
        line = _fails(capsys, *command)
        assert "schema version 2, not 1: it was made by another release" in line, command


def _key_rows(d: Path) -> list[KeyRow]:
    store = OperatorStore.open(d)
    try:
        return store.key_rows()
    finally:
        store.close()


@pytest.mark.parametrize("command", [["init"], ["client", "list"], ["serve"]])
@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("garbage", "file is not a database"),
        # A copy cut short: `init` would make it a new deployment (new salts and keys), `serve`
        # said "not initialised" and left it no longer empty.
        ("empty", "is an empty file (0 bytes), not a store"),
        ("damaged", "is damaged"),
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
    if kind == "empty":
        assert named.stat().st_size == 0  # left as found, for whoever looks into it


def test_a_backup_of_an_empty_store_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "not an initialised operator store of schema version 1", as if the wrong file.
    data_dir, named = unusable_store(tmp_path, "operator.sqlite3", "empty")
    target = tmp_path / "copy.sqlite3"
    line = _fails(capsys, "backup", "--data-dir", str(data_dir), "--to", str(target))
    assert f"store {named} is an empty file (0 bytes), not a store" in line
    assert not target.exists()


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("foreign", "cannot be used: no such column"),
        ("unwritable", "/proc/self/operator.sqlite3 cannot be created"),
        ("uncreatable", "data dir /proc/nonexistent/data cannot be created"),
    ],
)
def test_init_says_what_is_wrong_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, problem: str
) -> None:
    data_dir, _ = unusable_store(tmp_path, "operator.sqlite3", kind)
    line = _fails(capsys, "init", "--data-dir", str(data_dir))
    assert problem in line and str(data_dir) in line


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--activation-delay", "99999999999999999999"], "activation delay"),
        (["--activation-delay", "-1"], "activation delay"),
        # Another serve process may not have loaded a key that activates at once.
        (["--activation-delay", "0"], "every operator process has the key"),
        (
            ["--activation-delay", "2", "--token-lifetime", "-100000",
             "--refresh-lifetime", "-100000"],
            "--token-lifetime (or UID2_OPERATOR_TOKEN_LIFETIME_S): must be at least 1",
        ),
        (["--token-lifetime", "0"], "--token-lifetime (or UID2_OPERATOR_TOKEN_LIFETIME_S): must"),
        (["--refresh-lifetime", "0"], "--refresh-lifetime (or UID2_OPERATOR_REFRESH_LIFETIME_S)"),
        (["--token-lifetime", "99999999999999999999"], "TOKEN_LIFETIME_S): must be at most"),
        (["--token-lifetime", "100", "--refresh-lifetime", "50"], "must not exceed"),
    ],
)  # fmt: skip
def test_keys_rotate_rejects_what_serve_rejects(
    initialised: Path, capsys: pytest.CaptureFixture[str], flags: list[str], problem: str
) -> None:
    before = _key_rows(initialised)
    assert problem in _fails(capsys, "keys", "rotate", "--data-dir", str(initialised), *flags)
    assert _key_rows(initialised) == before


def test_zero_from_the_environment_is_not_the_default(
    initialised: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UID2_OPERATOR_TOKEN_LIFETIME_S", "0")
    before = _key_rows(initialised)
    line = _fails(capsys, "keys", "rotate", "--data-dir", str(initialised))
    assert "--token-lifetime (or UID2_OPERATOR_TOKEN_LIFETIME_S): must be at least 1" in line
    assert _key_rows(initialised) == before
    # The same setting stops `serve` too, with the same words.
    assert line == _fails(capsys, "serve", "--data-dir", str(initialised))


def test_keys_rotate_with_valid_lifetimes(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["keys", "rotate", "--data-dir", str(initialised), "--token-lifetime", "60"]
    assert cli.main([*argv, "--refresh-lifetime", "120", "--activation-delay", "2"]) == 0
    assert '"created": 3' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        ([], "required: command"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["site", "add", "--site-id", "abc", "--name", "x"], "--site-id: 'abc' is not an integer"),
        (["client", "add", "--site-id", "5", "--name", "x"], "required: --roles"),
        (["client", "disable"], "--name --key-id is required"),
        (["serve", "--token-lifetime", "1e3"], "'1e3' is not an integer"),
        (["init", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argument_mistakes_are_one_line(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse's own error prints its usage block; the contract wants one line and exit 2.
    assert problem in _fails(capsys, *argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["site", "add", "--name", "x", "--site-id"],
        ["client", "add", "--name", "x", "--roles", "GENERATOR", "--site-id"],
        ["delegation", "grant", "--client-name", "x", "--site-id"],
        ["keypair", "add", "--site-id"],
        ["keys", "rotate", "--activation-delay"],
        ["salts", "rotate", "--fraction"],
    ],
)
def test_a_secret_typed_into_a_number_flag_is_not_repeated(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    pasted = "UID2-C-36dab4e6c2a5-1gV3VcIhUOFkHNyOVUc20dyDmZoM_Zy5JCDOH2ovbp0"
    for value in (pasted, "victim@example.com"):
        line = _fails(capsys, *argv, value)
        assert value not in line and argv[-1] in line


def test_keypair_commands(initialised: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(initialised)
    assert "no site 10" in _fails(capsys, "keypair", "add", "--data-dir", d, "--site-id", "10")
    assert cli.main(["site", "add", "--data-dir", d, "--site-id", "10", "--name", "n"]) == 0
    capsys.readouterr()
    assert cli.main(["keypair", "add", "--data-dir", d, "--site-id", "10"]) == 0
    out, err = capsys.readouterr()
    added = json.loads(out)
    # The site lists no domain yet: said, not refused (domains may well come next).
    assert "site 10 lists no domain or app name yet" in err
    assert cli.main(["site", "add", "--data-dir", d, "--site-id", "10", "--name", "n",
                     "--domain", "n.example"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["keypair", "add", "--data-dir", d, "--site-id", "10"]) == 0
    assert capsys.readouterr().err == ""
    assert added["site_id"] == 10 and added["public_key"].startswith("UID2-X-P-")
    sub = added["subscription_id"]
    assert cli.main(["keypair", "disable", "--data-dir", d, "--subscription-id", sub]) == 0
    assert json.loads(capsys.readouterr().out) == {"disabled": sub}
    assert cli.main(["keypair", "list", "--data-dir", d]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    (listed,) = [r for r in rows if r["subscription_id"] == sub]
    assert listed["subscription_id"] == sub and listed["disabled"] is True
    assert listed["public_key"] == added["public_key"]
    assert cli.main(["keypair", "enable", "--data-dir", d, "--subscription-id", sub]) == 0
    capsys.readouterr()
    assert "no such subscription id" in _fails(
        capsys, "keypair", "enable", "--data-dir", d, "--subscription-id", "nope"
    )
    assert "--site-id" in _fails(capsys, "keypair", "add", "--data-dir", d)


@pytest.mark.parametrize(
    "argv",
    [
        ["site", "add", "--site-id", "2", "--name", "x"],
        ["client", "add", "--site-id", "2", "--name", "x", "--roles", "SHARER"],
        ["delegation", "grant", "--site-id", "2", "--client-name", "x"],
        ["keypair", "add", "--site-id", "2"],
    ],
)
def test_the_fallback_site_is_not_for_participants(
    initialised: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Site 2's keys encrypt the tokens of every site without a key of its own.
    d = str(initialised)
    assert "fallback site" in _fails(capsys, *argv, "--data-dir", d)
    assert cli.main(["site", "list", "--data-dir", d]) == 0
    sites = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["name"] for s in sites if s["site_id"] == 2] == ["fallback"]
    assert cli.main(["client", "list", "--data-dir", d]) == 0
    assert capsys.readouterr().out == ""


def test_site_list_shows_what_site_add_stored(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(initialised)
    assert cli.main(["site", "add", "--data-dir", d, "--site-id", "7", "--name", "Seven",
                     "--domain", "Straße.de", "--app-name", "com.seven"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["site", "list", "--data-dir", d]) == 0
    sites = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"site_id": 7, "name": "Seven", "domains": ["xn--strae-oqa.de"],
            "app_names": ["com.seven"]} in sites  # fmt: skip


def test_salts_rotate_rotates_the_fraction_and_refuses_one_out_of_range(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(initialised)
    store = OperatorStore.open(initialised)
    try:
        before = store.load_salt_blobs()
    finally:
        store.close()
    assert cli.main(["salts", "rotate", "--data-dir", d, "--fraction", "0.25"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rotated": BUCKET_COUNT // 4}
    store = OperatorStore.open(initialised)
    try:
        after = store.load_salt_blobs()
    finally:
        store.close()
    assert after["salts"] != before["salts"]
    for bad in ("0", "-0.5", "1.5"):
        assert "fraction must be within (0, 1]" in _fails(
            capsys, "salts", "rotate", "--data-dir", d, "--fraction", bad
        )
    for bad in ("nan", "inf"):
        assert f"--fraction: '{bad}' is not a finite number" in _fails(
            capsys, "salts", "rotate", "--data-dir", d, "--fraction", bad
        )
    assert "--fraction" in _fails(capsys, "salts", "rotate", "--data-dir", d, "--fraction", "x")


def test_client_list_shows_clients_without_their_keys(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(initialised)
    assert cli.main(["client", "add", "--data-dir", d, "--site-id", "5", "--name", "pub",
                     "--roles", "GENERATOR,MAPPER"]) == 0  # fmt: skip
    added = json.loads(capsys.readouterr().out)
    assert cli.main(["client", "list", "--data-dir", d]) == 0
    out = capsys.readouterr().out
    (listed,) = [json.loads(line) for line in out.splitlines()]
    assert listed["name"] == "pub" and listed["site_id"] == 5
    assert listed["roles"] == ["GENERATOR", "MAPPER"] and listed["disabled"] is False
    assert added["api_key"] not in out and added["secret"] not in out


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EPIPE, None])  # None: `>&-`
def test_a_client_whose_key_cannot_be_printed_is_not_saved(
    initialised: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    code: int | None,
) -> None:
    # `client add > /dev/full` or `| true`: a live key nobody saw would be left behind.
    d = str(initialised)
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", None if code is None else RefusingStdout(code))
        line = _fails(capsys, "client", "add", "--data-dir", d, "--site-id", "5",
                      "--name", "unseen", "--roles", "GENERATOR")  # fmt: skip
    assert "could not print the new API key" in line and "nothing was saved" in line
    assert cli.main(["client", "list", "--data-dir", d]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["site", "list", "--data-dir", d]) == 0
    assert '"site_id": 5' not in capsys.readouterr().out  # nor the site it would have made


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("client", "two\nlines"),
        ("client", "\x1b[31mred"),
        ("client", "n" * 65),
        ("client", "someone@example.com"),
        ("site", "+14155550100"),
        ("site", "   "),
    ],
)
def test_a_name_that_is_not_a_participants_is_refused(
    initialised: Path, capsys: pytest.CaptureFixture[str], command: str, name: str
) -> None:
    # Printed by `client list` / `site list` and in messages: printable, short, and not DII.
    d = str(initialised)
    extra = ["--roles", "GENERATOR"] if command == "client" else []
    line = _fails(capsys, command, "add", "--data-dir", d, "--site-id", "5", "--name", name,
                  *extra)  # fmt: skip
    assert "name" in line and "someone" not in line and "4155550100" not in line
    assert cli.main(["site", "list", "--data-dir", d]) == 0
    assert '"site_id": 5' not in capsys.readouterr().out


def test_a_client_is_found_by_its_name_as_given_at_add(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(initialised)
    assert cli.main(["client", "add", "--data-dir", d, "--site-id", "5", "--name", " Café Média ",
                     "--roles", "GENERATOR"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["name"] == "Café Média"
    decomposed = "Cafe\u0301 Me\u0301dia "  # the same name, typed another way
    assert cli.main(["client", "disable", "--data-dir", d, "--name", decomposed]) == 0
    assert json.loads(capsys.readouterr().out) == {"disabled": 1}


@pytest.mark.parametrize("legacy", ["ops@acme", "\uff37\uff49\uff44\uff45", "n" * 70])
def test_names_stored_before_the_name_rule_stay_usable(
    initialised: Path, capsys: pytest.CaptureFixture[str], legacy: str
) -> None:
    # Stored as typed by an earlier release, which checked nothing but blankness.
    d = str(initialised)
    assert cli.main(["client", "add", "--data-dir", d, "--site-id", "7", "--name", "placeholder",
                     "--roles", "GENERATOR"]) == 0  # fmt: skip
    store = OperatorStore.open(initialised)
    with store.transaction() as conn:
        conn.execute("UPDATE clients SET name = ? WHERE name = 'placeholder'", (legacy,))
    store.close()
    capsys.readouterr()
    # Another key under the name (key rotation), then a delegation granted, revoked, and the
    # client disabled, each by the name as it was stored.
    assert cli.main(["client", "add", "--data-dir", d, "--site-id", "7", "--name", legacy,
                     "--roles", "GENERATOR"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["name"] == legacy
    assert cli.main(["site", "add", "--data-dir", d, "--site-id", "9", "--name", "nine"]) == 0
    for action in ("grant", "revoke"):
        assert cli.main(["delegation", action, "--data-dir", d, "--site-id", "9",
                         "--client-name", legacy]) == 0  # fmt: skip
    assert cli.main(["client", "disable", "--data-dir", d, "--name", legacy]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"disabled": 2}


def test_a_key_printed_before_a_failed_commit_is_said_to_be_void(
    initialised: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is printed inside the transaction (so an unprintable one is not kept); should
    # the commit then fail, the key on stdout must not pass for a working one.
    real = OperatorStore.transaction

    @contextlib.contextmanager
    def failing_commit(self: OperatorStore) -> Iterator[sqlite3.Connection]:
        with real(self) as conn:
            yield conn
            raise sqlite_db.StoreWriteFailed("database or disk is full")

    d = str(initialised)
    monkeypatch.setattr(OperatorStore, "transaction", failing_commit)
    line = _fails(capsys, "client", "add", "--data-dir", d, "--site-id", "5", "--name", "void",
                  "--roles", "GENERATOR")  # fmt: skip
    assert "disk is full" in line and "printed above was not saved and does not work" in line
    monkeypatch.undo()
    assert cli.main(["client", "list", "--data-dir", d]) == 0
    assert capsys.readouterr().out == ""


def test_roles_given_twice_are_both_granted(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(initialised)
    assert cli.main(["client", "add", "--data-dir", d, "--site-id", "5", "--name", "two",
                     "--roles", "GENERATOR", "--roles", "MAPPER,OPTOUT"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["roles"] == ["GENERATOR", "MAPPER", "OPTOUT"]
    line = _fails(capsys, "client", "add", "--data-dir", d, "--site-id", "5", "--name", "three",
                  "--roles", "GENERATOR", "--roles", "")  # fmt: skip
    assert "unknown role" in line


def test_backup_and_restore_refuse_what_is_not_an_operator_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], initialised: Path
) -> None:
    ssp_backup = tmp_path / "ssp.backup"
    (tmp_path / "ssp").mkdir()
    assert (
        ssp_cli.main(["subscriber", "add", "--data-dir", str(tmp_path / "ssp"), "--name", "s"]) == 0
    )
    assert (
        ssp_cli.main(["backup", "--data-dir", str(tmp_path / "ssp"), "--to", str(ssp_backup)]) == 0
    )
    line = _fails(capsys, "restore", "--data-dir", str(tmp_path / "new"), "--from", str(ssp_backup))
    assert "not an initialised operator store" in line and not (tmp_path / "new").exists()
    line = _fails(
        capsys, "backup", "--data-dir", str(tmp_path / "ssp"), "--to", str(tmp_path / "b")
    )
    assert "no store at" in line and not (tmp_path / "b").exists()
    assert cli.main(["backup", "--data-dir", str(initialised), "--to", str(tmp_path / "b")]) == 0


def test_a_backup_whose_meta_table_is_someone_elses_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "foreign.sqlite3"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE meta (k TEXT, v TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema_version', 'v2-beta')")  # not a number
    db.commit()
    db.close()
    line = _fails(capsys, "restore", "--data-dir", str(tmp_path / "new"), "--from", str(foreign))
    assert "not an initialised operator store" in line


def test_serving_checks_the_store_once(initialised: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """quick_check reads every page (seconds on a big store, cold): the serve command's
    pre-check runs it; the operator's own open and its reader connection must not again."""
    checks: list[int] = []
    real = sqlite_db.quick_check

    def counted(conn: sqlite3.Connection) -> str:
        checks.append(1)
        return real(conn)

    monkeypatch.setattr(sqlite_db, "quick_check", counted)
    OperatorStore.open(initialised).close()  # the serve command's pre-check
    assert len(checks) == 1
    served, _port = create_server(OperatorConfig(data_dir=initialised, listen="127.0.0.1:0"))
    try:
        assert len(checks) == 1
    finally:
        served.stop(0)


def test_init_again_with_another_identity_scope_is_refused(
    initialised: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It printed {"initialised": false} and exit 0: the scope asked for was silently not used."""
    line = _fails(capsys, "init", "--data-dir", str(initialised), "--identity-scope", "EUID")
    assert "--identity-scope (or UID2_OPERATOR_IDENTITY_SCOPE) EUID" in line
    assert "was initialised for UID2, which cannot change" in line
    monkeypatch.setenv("UID2_OPERATOR_IDENTITY_SCOPE", "euid")
    assert "initialised for UID2" in _fails(capsys, "init", "--data-dir", str(initialised))
    monkeypatch.delenv("UID2_OPERATOR_IDENTITY_SCOPE")
    # The same scope, or none named, is the harmless re-run it always was.
    for extra in ([], ["--identity-scope", "UID2"]):
        assert cli.main(["init", "--data-dir", str(initialised), *extra]) == 0
        assert json.loads(capsys.readouterr().out)["initialised"] is False
    store = OperatorStore.open(initialised)
    try:
        assert admin.identity_scope(store) == "UID2"
    finally:
        store.close()


def test_a_key_printed_before_a_stop_signal_is_said_to_be_void(
    initialised: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM, which the console entry raises as an exception) between the print
    and the commit: the command ends as stopped, and stderr says the printed key is void."""
    real = OperatorStore.transaction

    @contextlib.contextmanager
    def stopped_before_commit(self: OperatorStore) -> Iterator[sqlite3.Connection]:
        with real(self) as conn:
            yield conn
            raise KeyboardInterrupt

    d = str(initialised)
    monkeypatch.setattr(OperatorStore, "transaction", stopped_before_commit)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["client", "add", "--data-dir", d, "--site-id", "5", "--name", "stopped",
                  "--roles", "GENERATOR"])  # fmt: skip
    out, err = capsys.readouterr()
    assert json.loads(out)["name"] == "stopped"
    assert "printed above was not saved and does not work" in err
    monkeypatch.undo()
    assert cli.main(["client", "list", "--data-dir", d]) == 0
    assert capsys.readouterr().out == ""
