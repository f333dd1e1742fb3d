"""Scheduled rotation (serve --rotate-keys-every, --rotate-salts-daily-fraction) with an injected
clock: when a rotation is due, that it is the rotation `keys rotate` / `salts rotate` make, that
the second of two processes finds the first's rotation inside its own write transaction and
does nothing, and that a store failure is logged and retried, never raised."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from operator_svc import admin
from operator_svc.config import (
    HOUR_S,
    MAX_ROTATE_KEYS_EVERY_S,
    ConfigError,
    OperatorConfig,
)
from operator_svc.domain import rotation
from operator_svc.domain.operator import Operator
from operator_svc.domain.rotation import DAY_MS, Rotator, keys_due, salts_due
from operator_svc.store import DB_FILE, KeyRow, OperatorStore
from svc_common.clock import ManualClock
from svc_common.sqlite_db import StoreBusy, StoreWriteFailed
from tests.support.procs import wait_until
from tests.unit.operator.conftest import T0, another_writer_during_salt_rotation
from uid2_crypto.keys import MASTER_KEYSET_ID, REFRESH_KEYSET_ID
from uid2_crypto.salts import SaltSet

BUCKETS = 4096  # rotation reads and writes every bucket: a small set keeps each test quick
EVERY_S = 2 * DAY_MS // 1000


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store initialised at T0 with a small salt set, closed: each test runs on a copy."""
    d = tmp_path_factory.mktemp("rotation-template")
    store = OperatorStore.create(d)
    admin.initialise(store, T0, os.urandom)
    with store.transaction() as conn:
        blobs = SaltSet.generate(BUCKETS, os.urandom, T0).to_blobs()
        OperatorStore.write_salt_blobs(conn, blobs)
    store.close()
    return d / DB_FILE


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    shutil.copyfile(template, tmp_path / DB_FILE)
    return tmp_path


class Process:
    """What one serve process's rotation has: its own store connection and its clock."""

    def __init__(self, data_dir: Path, clock: ManualClock, **settings: Any) -> None:
        self.store = OperatorStore.open(data_dir)
        self.config = OperatorConfig(data_dir=data_dir, **settings)
        self.rotator = Rotator(self.store, self.config, clock=clock, rng=os.urandom)

    def close(self) -> None:
        self.rotator.stop()
        self.store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def spawn(data_dir: Path, clock: ManualClock) -> Iterator[Callable[..., Process]]:
    made: list[Process] = []

    def make(**settings: Any) -> Process:
        made.append(Process(data_dir, clock, **settings))
        return made[-1]

    yield make
    for p in made:
        p.close()


def _master_keys(store: OperatorStore) -> list[int]:
    return [k.created_s for k in store.key_rows() if k.keyset_id == MASTER_KEYSET_ID]


def _rotated_buckets(store: OperatorStore, at_ms: int) -> int:
    salts = SaltSet.from_blobs(store.load_salt_blobs())
    return sum(1 for i in range(len(salts)) if salts.rotated_at(i) == at_ms)


# -- when a rotation is due ------------------------------------------------------------------


def test_keys_are_due_once_the_newest_master_key_is_as_old_as_the_schedule() -> None:
    created_s = T0 // 1000
    far = created_s + 365 * 86_400  # keys that last a year: not due by running out
    assert not keys_due(created_s, far, T0, EVERY_S)
    assert not keys_due(created_s, far, T0 + EVERY_S * 1000 - 1, EVERY_S)
    assert keys_due(created_s, far, T0 + EVERY_S * 1000, EVERY_S)
    assert keys_due(created_s, far, T0 + 400 * DAY_MS, EVERY_S)
    assert keys_due(None, far, T0, EVERY_S)  # a master keyset with no key at all
    # A key another host's clock dated ahead of ours is not overdue.
    assert not keys_due(created_s + 60, far, T0, EVERY_S)


def test_keys_are_due_before_they_run_out_whatever_their_age() -> None:
    """A rotation by hand with a long --activation-delay makes a new key (young) that
    activates after the current ones expire: the schedule must not wait for its age."""
    created_s = T0 // 1000
    margin_s = rotation.RUN_OUT_MARGIN_S + rotation.SCHEDULED_ACTIVATION_DELAY_S
    assert not keys_due(created_s, created_s + margin_s, T0, EVERY_S)
    assert keys_due(created_s, created_s + margin_s - 1, T0, EVERY_S)
    assert keys_due(created_s, created_s, T0, EVERY_S)  # none active now


def test_keys_that_all_expired_are_rotated_once_not_at_every_check_until_the_new_ones_activate(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    """A deployment idle past its keys' year: no key is active now, nor until the new ones
    activate two hours later; counting from now would rotate at every check until then."""
    p = spawn(rotate_keys_every_s=EVERY_S)
    clock.set(T0 + 400 * DAY_MS)
    assert p.rotator.check() == ["keys"]
    for _ in range(5):
        clock.advance(60_000)
        assert p.rotator.check() == []
    # One new master key; the expired one pruned by that rotation.
    assert _master_keys(p.store) == [(T0 + 400 * DAY_MS) // 1000]


def test_the_run_out_counts_only_keysets_a_rotation_renews() -> None:
    """A disabled keyset gets no new key: counting it would make every check due."""
    secret = bytes(32)
    now_s = T0 // 1000
    rows = [
        KeyRow(1, MASTER_KEYSET_ID, -1, now_s, now_s, now_s + 365 * 86_400, secret),
        KeyRow(2, REFRESH_KEYSET_ID, -2, now_s, now_s, now_s + 60, secret),  # nearly out
    ]
    both = [MASTER_KEYSET_ID, REFRESH_KEYSET_ID]
    assert (
        rotation.keys_run_out_s(rows, both, now_s) <= now_s + rotation.SCHEDULED_ACTIVATION_DELAY_S
    )
    assert rotation.keys_run_out_s(rows, [MASTER_KEYSET_ID], now_s) == now_s + 365 * 86_400
    assert rotation.keys_run_out_s(rows, [], now_s) > now_s + 100 * 365 * 86_400


def test_salts_are_due_a_day_after_their_last_rotation_or_at_once_if_never() -> None:
    assert not salts_due(T0, T0 + DAY_MS - 1)
    assert salts_due(T0, T0 + DAY_MS)
    assert salts_due(None, T0)
    assert not salts_due(T0 + 1000, T0)


# -- keys ---------------------------------------------------------------------------------------


def test_keys_rotate_when_due_as_keys_rotate_does_with_serves_lifetimes(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    p = spawn(
        rotate_keys_every_s=EVERY_S,
        token_lifetime_s=2 * 86_400,
        refresh_lifetime_s=10 * 86_400,
        allow_clock_skew_s=600,
    )
    clock.set(T0 + EVERY_S * 1000 - 1000)
    assert p.rotator.check() == [] and len(_master_keys(p.store)) == 1
    clock.set(T0 + EVERY_S * 1000)
    with capture_logs() as logs:
        assert p.rotator.check() == ["keys"]
    now_s = clock.now_ms() // 1000
    activates = now_s + rotation.SCHEDULED_ACTIVATION_DELAY_S
    assert sorted(_master_keys(p.store)) == [T0 // 1000, now_s]
    rows = p.store.key_rows()
    # Every keyset got a key activating two hours from now: every decryptor, fetching keys
    # hourly ±10%, has it before its first use.
    new = [k for k in rows if k.created_s == now_s]
    assert len(new) == len(p.store.keysets()) and {k.activates_s for k in new} == {activates}
    # The keys it supersedes are kept as long as what they encrypted is accepted, no longer:
    # a sharer's token 30 days (serve's default), a refresh token its lifetime.
    old = {k.keyset_id: k.expires_s for k in rows if k.created_s == T0 // 1000}
    assert old[MASTER_KEYSET_ID] == activates + 30 * 86_400 + 600
    assert old[REFRESH_KEYSET_ID] == activates + 10 * 86_400 + 600
    (line,) = [e for e in logs if e["event"] == "keys_rotated_on_schedule"]
    assert line == {
        "event": "keys_rotated_on_schedule",
        "log_level": "info",
        "created": len(new),
        "pruned": 0,
        "activates": activates,
        "every_s": EVERY_S,
    }
    # The new key starts the schedule again.
    clock.advance(EVERY_S * 1000 - 1000)
    assert p.rotator.check() == []
    clock.advance(1000)
    assert p.rotator.check() == ["keys"] and len(_master_keys(p.store)) == 3


def test_a_keys_rotate_by_hand_counts_as_the_scheduled_one(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    p = spawn(rotate_keys_every_s=EVERY_S)
    admin.rotate_keys(p.store, now_ms=T0 + 4 * HOUR_S * 1000, rng=os.urandom)
    clock.set(T0 + EVERY_S * 1000)
    assert p.rotator.check() == []
    clock.set(T0 + (4 * HOUR_S + EVERY_S) * 1000)
    assert p.rotator.check() == ["keys"]


def test_the_second_process_finds_the_first_ones_rotation_and_does_nothing(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    """Both processes read the keys as due; the first rotates between the second's read and its
    write transaction. The second must look again under the write lock, and not rotate."""
    first, second = spawn(rotate_keys_every_s=EVERY_S), spawn(rotate_keys_every_s=EVERY_S)
    clock.set(T0 + EVERY_S * 1000)
    stale_read = second.store.newest_key_created_s

    def read_then_lose_the_race(keyset_id: int) -> int | None:
        seen = stale_read(keyset_id)
        assert first.rotator.check() == ["keys"]
        return seen

    second.store.newest_key_created_s = read_then_lose_the_race  # type: ignore[method-assign]  # a race made to order
    with capture_logs() as logs:
        assert second.rotator.check() == []
    assert len(_master_keys(first.store)) == 2
    assert [e["event"] for e in logs].count("keys_rotated_on_schedule") == 1
    assert second.rotator.failures == 0


def test_keys_off_rotates_nothing_however_old_they_are(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    p = spawn(rotate_salts_daily_fraction=0.5)
    clock.set(T0 + 364 * DAY_MS)
    assert p.rotator.check() == ["salts"]
    assert len(_master_keys(p.store)) == 1


# -- salts --------------------------------------------------------------------------------------


def test_salts_rotate_daily_and_the_time_is_kept_in_the_store(
    spawn: Callable[..., Process], clock: ManualClock, data_dir: Path
) -> None:
    p = spawn(rotate_salts_daily_fraction=1 / 365)
    expected = round(BUCKETS / 365)
    # Never rotated: due at once, as a first daily `salts rotate` would be.
    with capture_logs() as logs:
        assert p.rotator.check() == ["salts"]
    assert _rotated_buckets(p.store, T0) == expected
    assert p.store.salts_rotated_ms() == T0
    (line,) = [e for e in logs if e["event"] == "salts_rotated_on_schedule"]
    assert line["rotated"] == expected and line["fraction"] == 1 / 365
    assert set(line) == {"event", "log_level", "rotated", "fraction", "locked_ms"}
    clock.set(T0 + DAY_MS - 1)
    assert p.rotator.check() == []
    # Another process, or this one restarted, counts from the rotation the store recorded.
    restarted = spawn(rotate_salts_daily_fraction=1 / 365)
    assert restarted.rotator.check() == []
    clock.set(T0 + DAY_MS)
    assert restarted.rotator.check() == ["salts"]
    assert p.rotator.check() == []
    assert _rotated_buckets(p.store, T0 + DAY_MS) == expected


def test_a_daily_fraction_too_small_for_one_bucket_still_rotates_one(
    spawn: Callable[..., Process],
) -> None:
    """Otherwise each day would rewrite every bucket under the write lock, and have every
    process reload them all, to rotate none."""
    p = spawn(rotate_salts_daily_fraction=1e-9)
    assert p.rotator.check() == ["salts"]
    assert _rotated_buckets(p.store, T0) == 1


def test_a_salts_rotate_by_hand_counts_as_the_days_rotation(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    p = spawn(rotate_salts_daily_fraction=0.01)
    assert p.rotator.check() == ["salts"]
    admin.rotate_salts(p.store, 0.01, T0 + 20 * HOUR_S * 1000, os.urandom)
    clock.set(T0 + DAY_MS)
    assert p.rotator.check() == []
    clock.set(T0 + DAY_MS + 20 * HOUR_S * 1000)
    assert p.rotator.check() == ["salts"]


def test_a_store_rotated_before_the_time_was_recorded_counts_from_its_buckets(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    p = spawn(rotate_salts_daily_fraction=0.01)
    admin.rotate_salts(p.store, 0.01, T0 - HOUR_S * 1000, os.urandom)
    with p.store.transaction() as conn:  # as an older `salts rotate` left it
        conn.execute("DELETE FROM meta WHERE k = 'salts_rotated_ms'")
    assert p.store.salts_rotated_ms() == T0 - HOUR_S * 1000
    assert p.rotator.check() == []
    clock.set(T0 + DAY_MS - HOUR_S * 1000)
    assert p.rotator.check() == ["salts"]


def test_the_second_process_finds_the_first_ones_salt_rotation_and_does_nothing(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    first = spawn(rotate_salts_daily_fraction=0.25)
    second = spawn(rotate_salts_daily_fraction=0.25)
    stale_read = second.store.salts_rotated_ms

    def read_then_lose_the_race() -> int | None:
        seen = stale_read()
        assert first.rotator.check() == ["salts"]
        return seen

    second.store.salts_rotated_ms = read_then_lose_the_race  # type: ignore[method-assign]  # a race made to order
    assert second.rotator.check() == []
    # A quarter, not half: the second rotation never happened.
    assert _rotated_buckets(first.store, T0) == BUCKETS // 4


def test_the_daily_salt_rotation_is_computed_outside_the_write_lock(
    spawn: Callable[..., Process], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for `salts rotate` (test_admin_store): with 2^20 buckets, computing under the lock held
    # every opt-out write back once a day. Another writer must get in while it is computed.
    p = spawn(rotate_salts_daily_fraction=0.01)
    with another_writer_during_salt_rotation(data_dir, monkeypatch) as wrote:
        assert p.rotator.check() == ["salts"]
    assert wrote == [True]
    assert _rotated_buckets(p.store, T0) == round(BUCKETS * 0.01)


# -- failures, the thread, stopping -------------------------------------------------------------


@pytest.mark.parametrize("failure", [StoreBusy(), StoreWriteFailed("database or disk is full")])
def test_a_store_failure_is_logged_counted_and_retried_at_the_next_check(
    spawn: Callable[..., Process],
    clock: ManualClock,
    failure: Exception,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = spawn(rotate_keys_every_s=EVERY_S, rotate_salts_daily_fraction=0.01)
    clock.set(T0 + EVERY_S * 1000)
    working = p.store.transaction

    def refused() -> AbstractContextManager[Any]:
        raise failure

    monkeypatch.setattr(p.store, "transaction", refused)
    secrets = [k.secret for k in p.store.key_rows()]
    with capture_logs() as logs:
        assert p.rotator.check() == []
        assert p.rotator.check() == []
    assert p.rotator.failures == 4  # two checks, both jobs
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert {e["event"] for e in warned} == {"key_rotation_failed", "salt_rotation_failed"}
    assert all(e["code"] == "UNAVAILABLE" and "reason" in e for e in warned)
    text = repr(logs)
    assert not any(s.hex() in text or repr(s) in text for s in secrets)
    monkeypatch.setattr(p.store, "transaction", working)
    with capture_logs() as logs:
        assert p.rotator.check() == ["keys", "salts"]
    assert p.rotator.failures == 0
    assert {"key_rotation_recovered", "salt_rotation_recovered"} <= {e["event"] for e in logs}


def test_the_thread_checks_at_start_and_then_every_interval(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    p = spawn(rotate_keys_every_s=EVERY_S, rotation_check_interval_s=0.01)
    clock.set(T0 + EVERY_S * 1000)  # due before it starts: the first check is at start
    with capture_logs() as logs:
        p.rotator.start()
        assert wait_until(lambda: len(_master_keys(p.store)) == 2, 5)
        assert wait_until(lambda: p.rotator.checks >= 3, 5)
        assert len(_master_keys(p.store)) == 2  # the checks after it found it not due
        clock.advance(EVERY_S * 1000)
        assert wait_until(lambda: len(_master_keys(p.store)) == 3, 5)
        p.rotator.stop()
    scheduled = [e for e in logs if e["event"] == "rotation_scheduled"]
    assert scheduled == [
        {
            "event": "rotation_scheduled",
            "log_level": "info",
            "rotate_keys_every_s": EVERY_S,
            "rotate_salts_daily_fraction": 0.0,
            "keys_due_at": T0 // 1000 + 2 * EVERY_S,
        }
    ]
    checks = p.rotator.checks
    clock.advance(EVERY_S * 1000)
    assert p.rotator.checks == checks  # stopped: no check runs after stop()


def test_no_rotation_starts_once_a_stop_has_begun(
    spawn: Callable[..., Process], clock: ManualClock
) -> None:
    p = spawn(rotate_keys_every_s=EVERY_S, rotate_salts_daily_fraction=0.5)
    clock.set(T0 + EVERY_S * 1000)
    p.rotator.begin_stop()
    assert p.rotator.check() == []
    assert len(_master_keys(p.store)) == 1 and p.store.salts_rotated_ms() is None


def test_a_check_that_gets_the_lock_only_after_a_stop_writes_nothing(
    spawn: Callable[..., Process], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = spawn(rotate_keys_every_s=EVERY_S, rotate_salts_daily_fraction=0.5)
    clock.set(T0 + EVERY_S * 1000)
    working = p.store.transaction

    @contextmanager
    def stopped_while_waiting() -> Iterator[sqlite3.Connection]:
        p.rotator.begin_stop()  # the stop comes while the check waits for the lock
        with working() as conn:
            yield conn

    monkeypatch.setattr(p.store, "transaction", stopped_while_waiting)
    assert p.rotator.check() == []
    assert len(_master_keys(p.store)) == 1 and p.store.salts_rotated_ms() is None


def test_a_stop_waits_for_a_rotation_holding_the_lock_to_commit_and_log(
    spawn: Callable[..., Process], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = spawn(rotate_keys_every_s=EVERY_S)
    clock.set(T0 + EVERY_S * 1000)
    entered, proceed = threading.Event(), threading.Event()
    real = admin.rotate_keys_in

    def slow_rotation(conn: sqlite3.Connection, **kw: Any) -> admin.RotationReport:
        entered.set()
        assert proceed.wait(10)
        return real(conn, **kw)

    monkeypatch.setattr(admin, "rotate_keys_in", slow_rotation)  # rotation.py calls admin.x
    monkeypatch.setattr(rotation, "STOP_WAIT_S", 0.05)  # past it, the rotation is still going
    with capture_logs() as logs:
        p.rotator.start()
        assert entered.wait(5)
        stopper = threading.Thread(target=p.rotator.stop)
        stopper.start()
        stopper.join(0.5)
        assert stopper.is_alive()  # waiting on the rotation, past STOP_WAIT_S
        proceed.set()
        stopper.join(5)
        assert not stopper.is_alive()
    assert len(_master_keys(p.store)) == 2
    assert _count(logs, "keys_rotated_on_schedule") == 1


def _count(logs: list[Any], event: str) -> int:
    return sum(1 for e in logs if e["event"] == event)


def test_rotated_salts_record_a_time_that_survives_a_salt_set_reload(data_dir: Path) -> None:
    # The recorded time sits beside the buckets' own times, which agree with it.
    store = OperatorStore.open(data_dir)
    try:
        admin.rotate_salts(store, 0.5, T0 + 5, os.urandom)
        rotated_at = array("q", store.load_salt_blobs()["rotated_at"])
        assert max(rotated_at) == T0 + 5 == store.salts_rotated_ms()
    finally:
        store.close()


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"rotate_keys_every_s": DAY_MS // 1000 - 1},
            "key rotation interval must be 0 \\(off\\) or within",
        ),
        ({"rotate_keys_every_s": MAX_ROTATE_KEYS_EVERY_S + 1}, "key rotation interval"),
        ({"rotate_keys_every_s": -1}, "key rotation interval"),
        ({"rotate_salts_daily_fraction": 1.5}, "daily salt rotation fraction must be above 0"),
        ({"rotate_salts_daily_fraction": -0.1}, "daily salt rotation fraction"),
        ({"rotate_salts_daily_fraction": float("nan")}, "daily salt rotation fraction"),
        ({"rotation_check_interval_s": 0}, "rotation check interval"),
    ],
)
def test_the_config_refuses_a_schedule_out_of_range(
    settings: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        OperatorConfig(data_dir=tmp_path, **settings)


def test_the_limits_leave_a_month_of_key_life_and_allow_daily() -> None:
    assert MAX_ROTATE_KEYS_EVERY_S == admin.KEY_LIFETIME_S - 30 * 86_400
    OperatorConfig(data_dir=Path("x"), rotate_keys_every_s=DAY_MS // 1000)
    OperatorConfig(data_dir=Path("x"), rotate_keys_every_s=MAX_ROTATE_KEYS_EVERY_S)
    OperatorConfig(data_dir=Path("x"), rotate_salts_daily_fraction=1.0)


def test_the_operator_runs_the_schedule_and_its_readings_show_failures_in_a_row(
    data_dir: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = Operator.open(OperatorConfig(data_dir=data_dir), clock=clock, rng=os.urandom)
    try:
        off.start_rotation()  # nothing asked: no thread, and the reading says none failed
        assert off._rotator is None and off.readings()["rotation_failures"] == 0
    finally:
        off.close()
    clock.set(T0 + EVERY_S * 1000)
    config = OperatorConfig(
        data_dir=data_dir, rotate_keys_every_s=EVERY_S, rotation_check_interval_s=0.01
    )
    op = Operator.open(config, clock=clock, rng=os.urandom)
    working = op.store.transaction

    def busy() -> AbstractContextManager[Any]:
        raise StoreBusy()

    monkeypatch.setattr(op.store, "transaction", busy)
    try:
        op.start_rotation()
        assert wait_until(lambda: op.readings()["rotation_failures"] >= 2, 5)
        monkeypatch.setattr(op.store, "transaction", working)
        assert wait_until(lambda: op.readings()["rotation_failures"] == 0, 5)
        # The rotation it finally made reaches this process's own state through its sync.
        op.start_sync()
        assert wait_until(lambda: op.readings()["master_key_newest_age_seconds"] == 0, 5), (
            op.readings()
        )
    finally:
        op.close()
    assert len(_master_keys_in(data_dir)) == 2


def _master_keys_in(data_dir: Path) -> list[int]:
    store = OperatorStore.open(data_dir)
    try:
        return _master_keys(store)
    finally:
        store.close()
