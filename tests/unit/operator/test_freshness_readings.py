"""The /metrics readings an operations team alerts on when nobody runs `keys rotate` or
`salts rotate`: nothing fails until the last key expires, so the gauges must show it coming."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.store import DB_FILE, OperatorStore
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.operator.conftest import T0
from uid2_crypto.keys import REFRESH_KEYSET_ID
from uid2_crypto.salts import DAY_MS

DAY_S = 86_400
YEAR_S = 365 * DAY_S


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store initialised at T0 (2^20 salt buckets), closed: each test runs on a copy."""
    d = tmp_path_factory.mktemp("template")
    store = OperatorStore.create(d)
    admin.initialise(store, T0, os.urandom)
    store.close()  # the last connection: the WAL is folded into the file copied below
    return d / DB_FILE


@pytest.fixture
def op(initialised: Path, tmp_path: Path) -> Iterator[Operator]:
    shutil.copyfile(initialised, tmp_path / DB_FILE)
    operator = Operator.open(
        OperatorConfig(data_dir=tmp_path), clock=ManualClock(T0), rng=os.urandom
    )
    yield operator
    operator.close()


def _at(op: Operator, now_ms: int) -> dict[str, float]:
    assert isinstance(op.clock, ManualClock)
    op.clock.set(now_ms)
    return op.readings()


def test_without_a_rotation_the_keys_age_and_run_out_after_their_year(op: Operator) -> None:
    fresh = _at(op, T0)
    assert fresh["master_key_newest_age_seconds"] == 0
    assert fresh["token_keys_run_out_in_seconds"] == admin.KEY_LIFETIME_S == YEAR_S
    later = _at(op, T0 + 100 * DAY_MS + 500)
    assert later["master_key_newest_age_seconds"] == 100 * DAY_S + 0.5
    assert later["token_keys_run_out_in_seconds"] == 265 * DAY_S - 0.5
    assert _at(op, T0 + YEAR_S * 1000 - 1000)["token_keys_run_out_in_seconds"] == 1
    # 0 is when no token can be issued any more.
    assert _at(op, T0 + YEAR_S * 1000)["token_keys_run_out_in_seconds"] == 0
    with pytest.raises(ServiceError) as caught:
        op.tokens.generate_client_side(2, "email", "someone@example.com")
    assert (caught.value.kind, caught.value.reason) == (ErrorKind.UNAVAILABLE, "NO_ACTIVE_KEY")
    assert _at(op, T0 + 2 * YEAR_S * 1000)["token_keys_run_out_in_seconds"] == 0


def test_a_key_rotation_starts_the_age_again_and_pushes_the_run_out(op: Operator) -> None:
    rotated_ms = T0 + 300 * DAY_MS
    admin.rotate_keys(op.store, now_ms=rotated_ms, rng=os.urandom, activation_delay_s=3600)
    assert "keys" in op.sync_now()
    after = _at(op, rotated_ms)
    assert after["master_key_newest_age_seconds"] == 0
    # The key in use now expires a few days after its successor activates (the rotation
    # shortened it); what counts is that the successor takes over before then.
    assert after["token_keys_run_out_in_seconds"] == 3600 + YEAR_S
    assert _at(op, rotated_ms + 7200_000)["token_keys_run_out_in_seconds"] == YEAR_S - 3600


def test_the_refresh_keys_running_out_first_is_what_shows(op: Operator) -> None:
    # Every token needs a refresh key as well as a master key.
    (refresh,) = [k for k in op.store.key_rows() if k.keyset_id == REFRESH_KEYSET_ID]
    with op.store.transaction() as conn:
        OperatorStore.set_key_expiry(conn, refresh.key_id, T0 // 1000 + 10 * DAY_S)
    op.sync_now()
    assert _at(op, T0)["token_keys_run_out_in_seconds"] == 10 * DAY_S
    assert _at(op, T0)["master_key_newest_age_seconds"] == 0


def test_salts_show_how_far_past_their_refresh_time_the_first_due_bucket_is(
    op: Operator,
) -> None:
    start = _at(op, T0)["salts_refresh_overdue_seconds"]
    # A new set's refresh times are spread over the year from `init` on: the first is due soon.
    assert -DAY_S < start <= 0
    # Nobody rotates: it grows with the clock.
    assert _at(op, T0 + 30 * DAY_MS)["salts_refresh_overdue_seconds"] == start + 30 * DAY_S
    # A tenth of the buckets, the soonest due first: every one due in the 30 days (~8%).
    admin.rotate_salts(op.store, 0.1, T0 + 30 * DAY_MS, os.urandom)
    assert "salts" in op.sync_now()
    # None overdue: the next comes due in about 36.5 - 30 days.
    after = _at(op, T0 + 30 * DAY_MS)["salts_refresh_overdue_seconds"]
    assert -8 * DAY_S < after < -5 * DAY_S
