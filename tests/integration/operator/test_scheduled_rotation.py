"""Scheduled rotation with two operators on one data dir: exactly one of them rotates when a
rotation is due, and both serve the new keys and salts afterwards. In-process (create_server,
one injected clock for both, so rotations are made due without waiting) and as two real
`uid2-operator serve` processes starting together."""

from __future__ import annotations

import base64
import os
import sys
from array import array
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.domain import rotation
from operator_svc.server import OperatorServed, create_server
from operator_svc.store import KeyRow, OperatorStore
from svc_common.clock import ManualClock, SystemClock
from tests.integration.operator.conftest import OK_PRIVACY, md
from tests.support.procs import ServiceProcess, run_cli, wait_until
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg
from uid2_crypto.keys import MASTER_KEYSET_ID, REFRESH_KEYSET_ID, Key, KeyRing
from uid2_crypto.salts import BUCKET_COUNT
from uid2_crypto.tokens import TokenDecoder

T0 = 1_800_000_000_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# Longer than the new keys' activation delay (an hour): moving the clock past that activation
# must not make the keys due again.
EVERY_S = 2 * 86_400
FRACTION = 1 / 365
ROTATED = round(FRACTION * BUCKET_COUNT)  # 2873 buckets a day


def _init(d: Path, now_ms: int) -> dict[str, admin.NewClient]:
    store = OperatorStore.create(d)
    try:
        admin.initialise(store, now_ms, os.urandom)
        return {
            name: admin.add_client(
                store, site_id=site, name=name, roles=[role], now_ms=now_ms, rng=os.urandom
            )
            for name, site, role in (("gen", 200, "GENERATOR"), ("reader", 300, "ID_READER"))
        }
    finally:
        store.close()


def _key_rows(d: Path) -> list[KeyRow]:
    # Without the quick check: this is polled, and the check reads every page of the store.
    store = OperatorStore.open(d, check=False)
    try:
        return store.key_rows()
    finally:
        store.close()


def _salts_state(d: Path) -> tuple[bytes, int | None]:
    """The stored buckets' rotation times and the recorded time of the last rotation."""
    store = OperatorStore.open(d, check=False)
    try:
        return store.load_salt_blobs()["rotated_at"], store.salts_rotated_ms()
    finally:
        store.close()


def _salts_rotated_ms(d: Path) -> int | None:
    store = OperatorStore.open(d, check=False)
    try:
        return store.salts_rotated_ms()
    finally:
        store.close()


def _master_ids(rows: list[KeyRow]) -> set[int]:
    return {k.key_id for k in rows if k.keyset_id == MASTER_KEYSET_ID}


def _published_ids(address: str, reader: admin.NewClient) -> set[int]:
    with grpc.insecure_channel(address) as channel:
        keys = pbg.OperatorServiceStub(channel).GetBidstreamKeys(
            pb.GetBidstreamKeysRequest(), metadata=md(reader), timeout=5
        )
    return {k.id for k in keys.key_container.keys}


def _token(address: str, gen: admin.NewClient) -> str:
    with grpc.insecure_channel(address) as channel:
        out = pbg.OperatorServiceStub(channel).GenerateToken(
            pb.GenerateTokenRequest(
                dii=pb.Dii(email="rotated@example.com"), privacy_settings=OK_PRIVACY
            ),
            metadata=md(gen),
            timeout=5,
        )
    return str(out.identity.advertising_token)


def _rotated_buckets(rotated_at: bytes, at_ms: int) -> int:
    """How many buckets the stored `rotated_at` blob (little-endian int64s) says were rotated
    at `at_ms`."""
    times = array("q")
    times.frombytes(rotated_at)
    if sys.byteorder != "little":
        times.byteswap()
    return times.count(at_ms)


def _key(r: KeyRow) -> Key:
    return Key(r.key_id, r.keyset_id, r.site_id, r.created_s, r.activates_s, r.expires_s, r.secret)


def _count(logs: Sequence[Mapping[str, Any]], event: str) -> int:
    return sum(1 for e in logs if e["event"] == event)


@dataclass
class Twins:
    """Two servers on one data dir, one clock, and what they logged since before they started."""

    served: list[OperatorServed]
    clock: ManualClock
    dir: Path
    clients: dict[str, admin.NewClient]
    logs: list[MutableMapping[str, Any]]


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    clients = _init(tmp_path, T0)
    clock = ManualClock(T0 + 2 * EVERY_S * 1000)  # the keys from `init` are due
    config = OperatorConfig(
        data_dir=tmp_path,
        listen="127.0.0.1:0",
        sync_interval_s=0.05,
        rotate_keys_every_s=EVERY_S,
        rotate_salts_daily_fraction=FRACTION,
        rotation_check_interval_s=0.05,
    )
    served: list[OperatorServed] = []
    # From before the first server starts: its first check, at start, finds both rotations due.
    with capture_logs() as logs:
        try:
            for _ in range(2):
                served.append(create_server(config, clock=clock)[0])
            yield Twins(served, clock, tmp_path, clients, logs)
        finally:
            for server in served:
                server.stop(1.0)


def _checks(served: list[OperatorServed]) -> list[int]:
    counts = []
    for s in served:
        assert s.operator is not None and s.operator._rotator is not None
        counts.append(s.operator._rotator.checks)
    return counts


def _both_check_again(served: list[OperatorServed], times: int = 2) -> None:
    """Waits until each server has made `times` more checks than it had made so far."""
    start = _checks(served)
    assert wait_until(
        lambda: all(n >= s + times for n, s in zip(_checks(served), start, strict=True)), 10
    )


def test_two_servers_rotate_once_when_due_and_both_serve_the_new_keys(twins: Twins) -> None:
    served, clock, d, clients, logs = (
        twins.served,
        twins.clock,
        twins.dir,
        twins.clients,
        twins.logs,
    )
    addresses = [f"127.0.0.1:{s.port}" for s in served]
    _both_check_again(served)
    rows = _key_rows(d)
    rotated_at, salts_ms = _salts_state(d)
    # One rotation of each, however many checks both servers made.
    assert len(_master_ids(rows)) == 2
    assert salts_ms == clock.now_ms()
    assert _rotated_buckets(rotated_at, clock.now_ms()) == ROTATED
    assert _count(logs, "keys_rotated_on_schedule") == 1
    assert _count(logs, "salts_rotated_on_schedule") == 1

    # Both have loaded the new keys (through their sync) and publish them...
    created_s = clock.now_ms() // 1000
    new = [k for k in rows if k.created_s == created_s]
    assert len(new) == 5  # master, refresh, fallback and the two sites' keysets
    # Refresh keys are never published.
    published = {k.key_id for k in new if k.keyset_id != REFRESH_KEYSET_ID}
    assert wait_until(
        lambda: all(published <= _published_ids(a, clients["reader"]) for a in addresses), 10
    )
    # ... and the new salts.
    assert wait_until(
        lambda: all(
            s.operator is not None and s.operator.state.salts.to_blobs()["rotated_at"] == rotated_at
            for s in served
        ),
        10,
    )
    # Once the new keys activate, both encrypt with them: a decryptor holding only the new
    # keys reads either server's token.
    clock.advance(rotation.SCHEDULED_ACTIVATION_DELAY_S * 1000 + 1000)
    only_new = TokenDecoder(
        KeyRing(_key(k) for k in new),
        max_bidstream_lifetime_s=None,
        max_sharing_lifetime_s=None,
    )
    for a in addresses:
        assert only_new.decrypt(_token(a, clients["gen"]), clock.now_ms()).success

    assert len(_master_ids(_key_rows(d))) == 2
    # A day (and an hour) after the first salt rotation, exactly one more; the keys, due every
    # two days, not yet.
    clock.set(salts_ms + DAY_MS + HOUR_MS)
    assert wait_until(lambda: _salts_rotated_ms(d) == clock.now_ms(), 10)
    _both_check_again(served)
    rotated_at, _ = _salts_state(d)
    assert _rotated_buckets(rotated_at, clock.now_ms()) == ROTATED
    assert _count(logs, "salts_rotated_on_schedule") == 2
    assert _count(logs, "keys_rotated_on_schedule") == 1
    # The keys are due again (the salts not): again exactly one rotation, with both servers
    # checking as it comes due.
    clock.set(salts_ms + EVERY_S * 1000)
    assert wait_until(lambda: len(_master_ids(_key_rows(d))) == 3, 10)
    _both_check_again(served)
    assert len(_master_ids(_key_rows(d))) == 3
    assert _count(logs, "keys_rotated_on_schedule") == 2
    assert _count(logs, "salts_rotated_on_schedule") == 2
    assert not [e for e in logs if e["log_level"] == "warning" and "rotation" in e["event"]]


def _serve(d: Path) -> ServiceProcess:
    return ServiceProcess(
        [
            "uid2-operator",
            "serve",
            "--data-dir",
            str(d),
            "--listen",
            "127.0.0.1:0",
            "--rotate-keys-every",
            str(EVERY_S),
            "--rotate-salts-daily-fraction",
            "0.00274",
        ]
    )


@pytest.mark.slow
def test_two_serve_processes_starting_together_rotate_once(tmp_path: Path) -> None:
    """Keys two hours old and salts never rotated: both processes find both rotations due as
    they start, at about the same moment; one of them rotates each, once."""
    start_ms = SystemClock().now_ms()
    clients = _init(tmp_path, start_ms - 2 * EVERY_S * 1000)
    a, b = _serve(tmp_path), _serve(tmp_path)
    try:
        a.wait_ready(60)
        b.wait_ready(60)
        # Each logs its schedule once its first check is done, the rotations with it.
        assert wait_until(
            lambda: all(_count(p.events, "rotation_scheduled") == 1 for p in (a, b)), 30
        )
        events = a.events + b.events
        assert _count(events, "keys_rotated_on_schedule") == 1
        assert _count(events, "salts_rotated_on_schedule") == 1
        (salts_line,) = [e for e in events if e["event"] == "salts_rotated_on_schedule"]
        assert salts_line["rotated"] == round(0.00274 * BUCKET_COUNT)
        rows = _key_rows(tmp_path)
        salts_ms = _salts_rotated_ms(tmp_path)
        assert len(_master_ids(rows)) == 2 and salts_ms is not None and salts_ms >= start_ms
        schedules = [e for e in events if e["event"] == "rotation_scheduled"]
        newest_s = max(k.created_s for k in rows if k.keyset_id == MASTER_KEYSET_ID)
        assert {e["keys_due_at"] for e in schedules} == {newest_s + EVERY_S}
        assert {e["salts_due_at"] for e in schedules} == {(salts_ms + DAY_MS) // 1000}
        # The one that did not rotate loads the new keys through its sync, as the other does.
        published = {
            k.key_id for k in rows if k.created_s == newest_s and k.keyset_id != REFRESH_KEYSET_ID
        }
        assert wait_until(
            lambda: all(published <= _published_ids(p.address, clients["reader"]) for p in (a, b)),
            2,
        )
        # Nothing about a rotation ever shows a key or a salt.
        secrets = [k.secret for k in rows]
        text = a.log_text() + b.log_text()
        assert not any(sec.hex() in text or base64.b64encode(sec).decode() in text
                       for sec in secrets)  # fmt: skip
    finally:
        assert a.terminate() == 0
        assert b.terminate() == 0


@pytest.mark.slow
def test_serve_refuses_a_schedule_out_of_range_in_one_line(tmp_path: Path) -> None:
    _init(tmp_path, SystemClock().now_ms())
    for flag, value in (("--rotate-keys-every", "600"), ("--rotate-salts-daily-fraction", "2")):
        r = run_cli(["uid2-operator", "serve", "--data-dir", str(tmp_path), flag, value])
        assert r.returncode == 2, r.stderr
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"uid2-operator: error: {flag} (or UID2_OPERATOR_ROTATE_"), line


@pytest.mark.slow
def test_a_stop_during_a_salt_rotation_exits_zero_with_the_rotation_whole_or_absent(
    tmp_path: Path,
) -> None:
    """SIGTERM as the service starts serving, while the salt rotation its first check began
    (about a second for 2^20 buckets) is under way: the service still exits 0, and the store
    holds either all of that rotation or none of it."""
    _init(tmp_path, SystemClock().now_ms())
    proc = ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
         "--rotate-salts-daily-fraction", "0.5"]
    ).wait_ready(60)  # fmt: skip
    assert proc.terminate() == 0
    rotated_at, salts_ms = _salts_state(tmp_path)
    done = [e for e in proc.events if e["event"] == "salts_rotated_on_schedule"]
    if salts_ms is None:  # rolled back: not a bucket rotated
        assert done == [] and _rotated_buckets(rotated_at, 0) == BUCKET_COUNT
    else:  # committed: every bucket of it, stamped with the recorded time, and logged
        assert len(done) == 1 and done[0]["rotated"] == BUCKET_COUNT // 2
        assert _rotated_buckets(rotated_at, salts_ms) == BUCKET_COUNT // 2
        assert _rotated_buckets(rotated_at, 0) == BUCKET_COUNT // 2
