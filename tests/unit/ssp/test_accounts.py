import json
import os
import sqlite3
from pathlib import Path
from typing import Any, NoReturn

import pytest

from ssp_svc.cli import main as ssp_main
from ssp_svc.store.accounts import (
    AccountKind,
    FileAccountStore,
    SqliteAccountStore,
    StoreError,
)
from svc_common.clock import ManualClock

T0 = 1_800_000_000_000


def test_sqlite_keys_are_stored_hashed(tmp_path: Path) -> None:
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    account, key = store.add("news", AccountKind.PUBLISHER, ("example.com",))
    assert store.authenticate(key) == account
    assert store.authenticate(key + "x") is None and store.authenticate("nope") is None
    with pytest.raises(StoreError):
        store.add("news", AccountKind.PUBLISHER)
    store.close()
    assert key.encode() not in (tmp_path / "ssp.sqlite3").read_bytes()


_NOT_NAMES = [
    "jane.doe@publisher.example",
    "+12345678901",
    "555-123-4567",
    "x" * 65,
    "dGhpcyBpcyBhIHRlc3QgaGFzaCBvZiBhbiBlbWFpbA==",  # a hash, base64
    "jane.doe\uff20example.com",  # a fullwidth @
    "\u0662\u0660\u0666\u0665\u0665\u0665\u0667\u0667\u0668\u0661",  # Arabic-Indic digits
    "\u0662" * 70,  # too long as well: not repeated by the length's message either
    "\u2800",  # blank
    "e" + "\u0301" * 10,  # stacked accents
    "line\nbreak",
    "",
]


@pytest.mark.parametrize("name", _NOT_NAMES)
def test_account_names_are_logged_with_every_call_so_they_must_look_like_names(
    tmp_path: Path, name: str
) -> None:
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    try:
        with pytest.raises(StoreError) as exc:
            store.add(name, AccountKind.SUBSCRIBER)
        assert "not an account name" in str(exc.value)
        if "@" in name or "+" in name or "\u0662" in name:
            assert name not in str(exc.value)
        for fine in (
            " Example News ",
            "Acme, Inc.",
            "Café Média",
            "O'Reilly Media",
            "AT&T",
            "Northwind-Traders-Programmatic-Advertising-EU",  # a long slug of words
        ):
            assert store.add(fine, AccountKind.SUBSCRIBER)[0].name == fine.strip()
    finally:
        store.close()
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"subscribers": [{"name": name or " ", "api_key": "k1"}]}))
    with pytest.raises(StoreError) as exc:
        FileAccountStore(path, rng=os.urandom)
    assert "subscribers[0]" in str(exc.value) and "not an account name" in str(exc.value)


def test_sqlite_key_material_and_times_come_from_the_injected_sources(tmp_path: Path) -> None:
    """Key id, key secret and salt are drawn from `rng` in that order, the creation time read
    from `clock`: nothing in the store reads the system's randomness or time."""
    draws: list[int] = []

    def counting(n: int) -> bytes:
        draws.append(n)
        return bytes([len(draws)]) * n

    store = SqliteAccountStore(tmp_path, rng=counting, clock=ManualClock(T0 + 42))
    account, key = store.add("news", AccountKind.PUBLISHER, ("example.com",))
    assert draws == [8, 32, 16]
    assert account.account_id == "01" * 8
    assert key == "UID2-SSP-" + "01" * 8 + "." + "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI"
    assert store.authenticate(key) == account
    store.close()
    with sqlite3.connect(tmp_path / "ssp.sqlite3") as db:
        row = db.execute("SELECT salt, created_ms FROM accounts").fetchone()
    assert row == (b"\x03" * 16, T0 + 42)


def test_file_store_hashes_with_the_injected_salt(tmp_path: Path) -> None:
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"subscribers": [{"name": "a", "api_key": "k2"}]}))
    draws: list[int] = []

    def recording(n: int) -> bytes:
        draws.append(n)
        return bytes(n)

    store = FileAccountStore(path, rng=recording)
    assert draws == [16]
    account = store.authenticate("k2")
    assert account is not None and account.name == "a"


def test_publishers_file(tmp_path: Path) -> None:
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": [{"name": "n", "api_key": "k1",
                                                "domains": ["Example.com"]}],
                                "subscribers": [{"name": "a", "api_key": "k2"}]}))  # fmt: skip
    store = FileAccountStore(path, rng=os.urandom)
    pub = store.authenticate("k1")
    assert pub is not None and pub.kind is AccountKind.PUBLISHER
    assert pub.domains == ("example.com",)
    sub = store.authenticate("k2")
    assert sub is not None and sub.kind is AccountKind.SUBSCRIBER
    assert store.authenticate("k3") is None
    path.write_text("[]")
    with pytest.raises(StoreError):
        FileAccountStore(path, rng=os.urandom)
    path.write_text("[" * 100_000 + "]" * 100_000)  # past the parser's recursion limit
    with pytest.raises(StoreError, match="cannot read publishers file"):
        FileAccountStore(path, rng=os.urandom)


@pytest.mark.parametrize("key", ["secret-key ", "cl\u00e9-secr\u00e8te", "two words", "a\nb"])
def test_a_publishers_file_key_no_caller_could_send_is_refused(tmp_path: Path, key: str) -> None:
    """A trailing space is stripped from what callers send, and gRPC metadata carries printable
    ASCII only: such a key would start fine and never match. Refused as the flags refuse it,
    without repeating it."""
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"subscribers": [{"name": "a", "api_key": key}]}))
    with pytest.raises(StoreError) as exc:
        FileAccountStore(path, rng=os.urandom)
    assert "subscribers[0] ('a') api_key must be printable ASCII" in str(exc.value)
    assert key.strip() not in str(exc.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"domains": 5}, "domains must be a list of strings"),
        ({"domains": None}, "domains must be a list of strings"),
        ({"domains": "news.example.com"}, "domains must be a list of strings"),
        ({"domains": ["a.com", 7]}, "domains must be a list of strings"),
        ({"domains": ["a.com"], "apps": "com.x"}, "apps must be a list of strings"),
        ({}, "registers no domains or apps"),
        ({"domains": ["https://news.example.com/"]}, "is not a domain name"),
        ({"apps": ["com.x app"]}, "is not an app name"),
        ({"domains": [" "], "apps": []}, "registers no domains or apps"),
    ],
)
def test_publishers_file_entry_mistakes_name_the_entry(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = tmp_path / "pubs.json"
    ok = {"name": "fine", "api_key": "k0", "domains": ["ok.com"]}
    path.write_text(json.dumps({"publishers": [ok, {"name": "news", "api_key": "k1", **entry}]}))
    with pytest.raises(StoreError) as exc:
        FileAccountStore(path, rng=os.urandom)
    assert "publishers[1] ('news')" in str(exc.value) and message in str(exc.value)


def test_publishers_file_refuses_an_api_key_listed_twice(tmp_path: Path) -> None:
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": [{"name": "n", "api_key": "k1", "apps": ["com.x"]}],
                                "subscribers": [{"name": "a", "api_key": "k1"}]}))  # fmt: skip
    with pytest.raises(StoreError) as exc:
        FileAccountStore(path, rng=os.urandom)
    assert "subscribers[0] ('a')" in str(exc.value) and "publishers[0] ('n')" in str(exc.value)
    assert "k1" not in str(exc.value)


@pytest.mark.parametrize("second", ["news", " news ", "\uff4e\uff45\uff57\uff53"])
def test_publishers_file_refuses_a_name_listed_twice_as_publisher_add_does(
    tmp_path: Path, second: str
) -> None:
    # Both started, two accounts that logs and metrics could not tell apart.
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": [
        {"name": "news", "api_key": "key-one-aaaaaaaa", "domains": ["a.example.com"]},
        {"name": second, "api_key": "key-two-bbbbbbbb", "domains": ["b.example.com"]},
    ]}))  # fmt: skip
    with pytest.raises(StoreError) as exc:
        FileAccountStore(path, rng=os.urandom)
    message = str(exc.value)
    assert "publishers[1]" in message and "publishers[0] ('news')" in message, message
    assert "a publisher named 'news' is already listed" in message, message
    assert "key-one" not in message and "key-two" not in message


def test_a_publisher_and_a_subscriber_may_share_a_name(tmp_path: Path) -> None:
    # As in a store: names are unique per kind.
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": [{"name": "n", "api_key": "k1", "apps": ["a.b"]}],
                                "subscribers": [{"name": "n", "api_key": "k2"}]}))  # fmt: skip
    store = FileAccountStore(path, rng=os.urandom)
    assert store.authenticate("k1") is not None and store.authenticate("k2") is not None


def test_publishers_file_inventory_is_normalised_like_publisher_add(tmp_path: Path) -> None:
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": [{"name": "n", "api_key": "k1",
                                                "domains": [" News.Example.com ", ""],
                                                "apps": [" com.x "]}]}))  # fmt: skip
    pub = FileAccountStore(path, rng=os.urandom).authenticate("k1")
    assert pub is not None and pub.domains == ("news.example.com",) and pub.apps == ("com.x",)


@pytest.mark.parametrize(
    "publishers",
    [
        [{"name": "n", "api_key": "k1", "domains": 5}],
        [{"name": "n", "api_key": "k1", "domains": None}],
        [{"name": "n", "api_key": "k1", "domains": "news.example.com"}],
        [{"name": "n", "api_key": "k1", "domains": ["a.com"]},
         {"name": "m", "api_key": "k1", "domains": ["b.com"]}],
        [{"name": "n", "api_key": "k1", "domains": ["a.com"]},
         {"name": "n", "api_key": "k2", "domains": ["b.com"]}],
    ],
)  # fmt: skip
def test_serve_with_a_bad_publishers_file_is_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    publishers: list[dict[str, object]],
) -> None:
    # Should the file be accepted, fail at once instead of serving until killed.
    monkeypatch.setattr("svc_common.metrics.wait_for_signal", _never)
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": publishers}))
    assert ssp_main(["serve", "--publishers-file", str(path), "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "publishers[" in err


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        # One account's object where the file belongs: it served with no accounts at all.
        ({"name": "x", "api_key": "y"}, "unknown key 'api_key'"),
        ({}, 'needs a "publishers" or "subscribers" list'),
        # Lists with no account: an SSP that refused every key, contradicting its --help.
        ({"publishers": [], "subscribers": []}, "lists no accounts"),
        ({"subscribers": []}, "lists no accounts"),
        ({"publisher": []}, "unknown key 'publisher'"),
        ({"publishers": [], "comment": "x"}, "unknown key 'comment'"),
        ({"subscribers": [{"name": "a", "api_key": "k", "domains": ["a.com"]}]},
         "subscribers[0] ('a'): unknown key 'domains'"),
        ({"publishers": [{"name": "n", "api_key": "k", "domains": ["a.com"], "app": ["com.x"]}]},
         "publishers[0] ('n'): unknown key 'app'"),
        # A pasted key or an email as a key, an email as a name: not repeated in the message.
        ({"UID2-SSP-3f9a1c2b.Zk8pQ2vX9rLm4TnB7wYc1d": []}, "unknown key (a value not repeated"),
        ({"jane.doe@example.com": []}, "unknown key (a value not repeated"),
        ({"subscribers": [{"name": "jane.doe@example.com", "api_key": "k", "x": 1}]},
         "subscribers[0] ((a value not repeated"),
    ],
)  # fmt: skip
def test_publishers_file_of_another_shape_is_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    doc: dict[str, object],
    message: str,
) -> None:
    monkeypatch.setattr("svc_common.metrics.wait_for_signal", _never)
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps(doc))
    assert ssp_main(["serve", "--publishers-file", str(path), "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("uid2-ssp: error: "), err
    assert message in err, err
    assert "Traceback" not in err and '"y"' not in err
    assert "@" not in err and "Zk8pQ2" not in err


def test_publishers_file_may_leave_out_either_list(tmp_path: Path) -> None:
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": [{"name": "n", "api_key": "k1", "apps": ["a.b"]}]}))
    assert FileAccountStore(path, rng=os.urandom).authenticate("k1") is not None
    path.write_text(json.dumps({"subscribers": [{"name": "a", "api_key": "k2"}]}))
    store = FileAccountStore(path, rng=os.urandom)
    assert store.authenticate("k1") is None and store.authenticate("k2") is not None


def test_publisher_add_needs_a_domain_or_an_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ssp_main(["publisher", "add", "--data-dir", str(tmp_path), "--name", "n"]) == 2
    assert "--domain or --app" in capsys.readouterr().err
    assert ssp_main(["publisher", "add", "--data-dir", str(tmp_path), "--name", "n",
                     "--app", "com.x"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["apps"] == ["com.x"]
    assert ssp_main(["publisher", "add", "--data-dir", str(tmp_path), "--name", "m",
                     "--domain", "news.example.com:443"]) == 2  # fmt: skip
    assert "is not a domain name" in capsys.readouterr().err
    # Its subdomains pass the allow-list: a public suffix would let any publisher's pages in.
    assert ssp_main(["publisher", "add", "--data-dir", str(tmp_path), "--name", "m",
                     "--domain", "co.uk"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "is a public suffix" in err and len(err.strip().splitlines()) == 1
    assert ssp_main(["subscriber", "add", "--data-dir", str(tmp_path), "--name", "s"]) == 0


def _never() -> NoReturn:
    raise AssertionError("the SSP started serving")


def test_domains_stored_as_typed_are_compared_normalised(tmp_path: Path) -> None:
    """Review: `publisher add` before c26b225 stored domains as typed (stripped, lower case);
    SubmitImpression now compares the normalised page domain, so they must load normalised."""
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    _, key = store.add("news", AccountKind.PUBLISHER, ("b\u00fccher.example", "news.example.com."))
    account = store.authenticate(key)
    assert account is not None
    assert account.domains == ("xn--bcher-kva.example", "news.example.com")
    store.close()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("absent", "does not exist"),
        ("directory", "is a directory, not a file"),
        ("device", "is not a regular file"),
        ("empty", "is empty (0 bytes)"),
        ("unreadable", "cannot be read: Permission denied"),
    ],
)
def test_serve_says_why_a_publishers_file_cannot_be_used(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    reason: str,
) -> None:
    # "does not exist" for a path that exists sent the reader looking in the wrong place.
    monkeypatch.setattr("svc_common.metrics.wait_for_signal", _never)
    path = {"device": Path("/dev/null"), "directory": tmp_path}.get(kind, tmp_path / "pubs.json")
    if kind == "empty":
        path.touch()
    elif kind == "unreadable":
        path.write_text("{}")
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads it all the same: refuse it as a reader would
            real_open = Path.open

            def refusing(self: Path, *args: Any, **kwargs: Any) -> Any:
                if self == path:
                    raise PermissionError(13, "Permission denied", str(self))
                return real_open(self, *args, **kwargs)

            monkeypatch.setattr(Path, "open", refusing)
    assert ssp_main(["serve", "--publishers-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"uid2-ssp: error: publishers file {path} {reason}"), err
    assert ("does not exist" in err) == (kind == "absent"), err


def test_a_publishers_file_json_syntax_error_says_where_not_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said only "JSONDecodeError", leaving the reader to hunt for a trailing comma.
    monkeypatch.setattr("svc_common.metrics.wait_for_signal", _never)
    path = tmp_path / "pubs.json"
    entry = ' {"name": "news", "api_key": "key-one-aaaaaaaa", "domains": ["a.example.com"],}'
    path.write_text('{"publishers": [\n' + entry + "\n]}\n")
    assert ssp_main(["serve", "--publishers-file", str(path)]) == 2
    err = capsys.readouterr().err
    column = entry.index(",}") + 2  # the "}" a trailing comma leaves without a key
    assert err == (
        f"uid2-ssp: error: cannot start: cannot read publishers file {path}: JSONDecodeError "
        f"at line 2 column {column}\n"
    ), err


def test_a_publishers_file_naming_a_key_twice_is_refused(tmp_path: Path) -> None:
    """json.loads keeps the last: the first "publishers" list was dropped, its keys refused."""
    path = tmp_path / "pubs.json"
    first = '{"name": "a", "api_key": "k1", "domains": ["a.com"]}'
    second = '{"name": "b", "api_key": "k2", "domains": ["b.com"]}'
    path.write_text(f'{{"publishers": [{first}], "publishers": [{second}]}}')
    with pytest.raises(StoreError, match="key 'publishers' appears twice in one object"):
        FileAccountStore(path, rng=os.urandom)


def test_a_store_of_a_newer_release_is_refused_at_open(tmp_path: Path) -> None:
    SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0)).close()
    conn = sqlite3.connect(tmp_path / "ssp.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with pytest.raises(StoreError) as exc:
        SqliteAccountStore(tmp_path, rng=os.urandom, clock=ManualClock(T0))
    assert "schema version 2, newer than this release's 1" in str(exc.value)
