import json
from pathlib import Path

import pytest

from ssp_svc.store.accounts import (
    AccountKind,
    FileAccountStore,
    SqliteAccountStore,
    StoreError,
)


def test_sqlite_keys_are_stored_hashed(tmp_path: Path) -> None:
    store = SqliteAccountStore(tmp_path)
    account, key = store.add("news", AccountKind.PUBLISHER, ("example.com",))
    assert store.authenticate(key) == account
    assert store.authenticate(key + "x") is None and store.authenticate("nope") is None
    with pytest.raises(StoreError):
        store.add("news", AccountKind.PUBLISHER)
    store.close()
    assert key.encode() not in (tmp_path / "ssp.sqlite3").read_bytes()


def test_publishers_file(tmp_path: Path) -> None:
    path = tmp_path / "pubs.json"
    path.write_text(json.dumps({"publishers": [{"name": "n", "api_key": "k1",
                                                "domains": ["Example.com"]}],
                                "subscribers": [{"name": "a", "api_key": "k2"}]}))  # fmt: skip
    store = FileAccountStore(path)
    pub = store.authenticate("k1")
    assert pub is not None and pub.kind is AccountKind.PUBLISHER
    assert pub.domains == ("example.com",)
    sub = store.authenticate("k2")
    assert sub is not None and sub.kind is AccountKind.SUBSCRIBER
    assert store.authenticate("k3") is None
    path.write_text("[]")
    with pytest.raises(StoreError):
        FileAccountStore(path)
