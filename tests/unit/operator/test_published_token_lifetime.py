"""The key containers' max_bidstream_lifetime_seconds after a serve changes --token-lifetime:
decryptors refuse a token that lives longer than it says (INVALID_TOKEN_LIFETIME), so it must
cover every token this store's serves have issued, not only the current setting."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from uid2_client.client_type import ClientType as SdkClientType
from uid2_client.encryption import decrypt_token as sdk_decrypt_token
from uid2_client.refresh_keys_util import parse_keys_json

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.domain.privacy import Privacy
from operator_svc.store import OperatorStore
from svc_common import sqlite_db
from svc_common.clock import ManualClock
from svc_common.sqlite_db import StoreBusy
from tests.unit.operator.conftest import T0

DAY_S = 86_400


def _store(tmp_path: Path) -> tuple[str, str]:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    keys = [
        admin.add_client(store, site_id=site, name=name, roles=[role], now_ms=T0, rng=os.urandom)
        for site, name, role in ((10, "gen", "GENERATOR"), (30, "reader", "ID_READER"))
    ]
    store.close()
    return keys[0].api_key, keys[1].api_key


def _open(tmp_path: Path, token_days: int, max_bidstream_days: int = 0) -> Operator:
    config = OperatorConfig(
        data_dir=tmp_path,
        token_lifetime_s=token_days * DAY_S,
        max_bidstream_lifetime_s=max_bidstream_days * DAY_S,
    )
    return Operator.open(config, clock=ManualClock(T0), rng=os.urandom)


def _published_max_s(op: Operator, reader_key: str) -> int:
    return op.keys.bidstream_keys(op.auth.authenticate(reader_key)).max_bidstream_lifetime_seconds


def test_a_shorter_token_lifetime_keeps_accepting_the_longer_lived_tokens_out_there(
    tmp_path: Path,
) -> None:
    gen_key, reader_key = _store(tmp_path)
    three_days = _open(tmp_path, 3)
    outcome = three_days.tokens.generate(
        three_days.auth.authenticate(gen_key),
        "email",
        "user@example.com",
        Privacy(transparency_notice_accepted=True),
    )
    assert outcome.identity is not None
    token = outcome.identity.advertising_token
    three_days.close()

    one_day = _open(tmp_path, 1)
    try:
        assert _published_max_s(one_day, reader_key) == 3 * DAY_S
        published = one_day.keys.bidstream_keys(one_day.auth.authenticate(reader_key))
        keys = parse_keys_json(published.to_json()).keys
        an_hour_later = dt.datetime.fromtimestamp(T0 / 1000 + 3600, tz=dt.UTC)
        result = sdk_decrypt_token(token, keys, None, SdkClientType.BIDSTREAM, an_hour_later)
        assert result.status.name == "SUCCESS"
    finally:
        one_day.close()
    # Set explicitly, the maximum is the operator's own choice (once the old tokens are gone).
    explicit = _open(tmp_path, 1, max_bidstream_days=1)
    try:
        assert _published_max_s(explicit, reader_key) == DAY_S
    finally:
        explicit.close()


def test_another_serve_with_a_longer_lifetime_reaches_a_running_one(tmp_path: Path) -> None:
    _, reader_key = _store(tmp_path)
    running = _open(tmp_path, 1)
    try:
        assert _published_max_s(running, reader_key) == DAY_S
        longer = _open(tmp_path, 5)
        longer.close()
        assert "keys" in running.sync_now()
        assert _published_max_s(running, reader_key) == 5 * DAY_S
    finally:
        running.close()


def test_a_start_with_no_longer_a_lifetime_takes_no_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process's write (a salt rotation holds the lock about a second) must not hold up,
    # or fail, a start that has nothing to record.
    _store(tmp_path)
    _open(tmp_path, 3).close()
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", 0.2)
    other = OperatorStore.open(tmp_path)
    try:
        with other.transaction():
            _open(tmp_path, 3).close()
            with pytest.raises(StoreBusy):  # what a start with a longer one meets meanwhile
                _open(tmp_path, 5)
    finally:
        other.close()
