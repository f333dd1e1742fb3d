"""WatchOptOuts after a salt rotation: tokens issued before it still carry the raw UID2 under
the previous salt, so the stream sends that one too (audit: optout_after_salt_rotation)."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from operator_svc import admin
from operator_svc.domain import state as state_module
from operator_svc.domain.api_keys import api_key_id
from operator_svc.domain.dii import dii_flh
from operator_svc.domain.optout import OptOutService
from operator_svc.domain.state import (
    OperatorState,
    OptOutIndex,
    SaltSwitch,
    StateLoader,
)
from operator_svc.store import OperatorStore, OptOutRow
from svc_common.clock import ManualClock
from svc_common.errors import ServiceError
from tests.support.procs import wait_until
from tests.unit.operator.conftest import T0, Env
from uid2_crypto.salts import SaltSet, bucket_index, raw_uid2


def _rotate(env: Env, fraction: float) -> None:
    """Rotates `fraction` of the shared store's buckets at a time past the minimum age of the
    last rotation (earlier tests of the module rotated at T0), so that they all rotate."""
    last = max(env.op.state.salts.rotated_at(i) for i in range(0, len(env.op.state.salts), 997))
    at = T0 if last == 0 else last + admin.salt_min_age_ms(env.store.longest_token_lifetime())
    want = round(fraction * len(env.op.state.salts))
    assert admin.rotate_salts(env.store, fraction, at, os.urandom) == want


def _backlog(env: Env) -> set[str]:
    out: set[str] = set()
    for item in env.op.optouts.watch(env.client("reader"), 0, lambda: True):
        if item is None:
            return out
        out.add(item[0])
    return out


def test_stream_sends_the_raw_uid2_under_the_previous_salt_too(env: Env) -> None:
    _, flh = dii_flh("email", "rotated@example.com", env.op.state.first_level_salt)
    b = bucket_index(flh)
    before = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(b))).decode()
    env.op.optouts.opt_out(env.client("optout"), "email", "rotated@example.com")
    assert before in _backlog(env)
    _rotate(env, 1.0)
    env.op.sync_now()
    after = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(b))).decode()
    assert after != before
    assert {before, after} <= _backlog(env)


def test_status_knows_the_raw_uid2_under_the_previous_salt_too(env: Env) -> None:
    _, flh = dii_flh("email", "status@example.com", env.op.state.first_level_salt)
    b = bucket_index(flh)
    before = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(b))).decode()
    _rotate(env, 1.0)
    env.op.sync_now()
    after = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(b))).decode()
    # Opted out after the rotation: a token issued before it still carries `before`.
    at = env.op.optouts.opt_out(env.client("optout"), "email", "status@example.com")
    status = env.op.optouts.opt_out_status(env.client("reader"), [before, after])
    assert sorted(status) == sorted([(before, at), (after, at)])


def test_a_never_opted_out_identity_stays_out_of_status_after_a_rotation(env: Env) -> None:
    # validate@example.com's opt-out is acknowledged but shown nowhere, new salts or not.
    env.op.optouts.opt_out(env.client("optout"), "email", "validate@example.com")
    _rotate(env, 1.0)
    env.op.sync_now()
    _, flh = dii_flh("email", "validate@example.com", env.op.state.first_level_salt)
    now_uid = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(bucket_index(flh)))).decode()
    assert env.op.optouts.opt_out_status(env.client("reader"), [now_uid]) == []
    assert now_uid not in _backlog(env)


def test_the_rest_of_the_state_is_in_use_while_new_salts_are_prepared(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recomputing opt-outs for new salts took seconds with 500,000 of them, under the index's
    # lock and before the sync read clients and keys: a client disabled right after a salt
    # rotation stayed accepted, and this process's own opt-outs waited, for 2-4 s.
    temp = admin.add_client(
        env.store, site_id=10, name="temp-during-salts", roles=["OPTOUT"], now_ms=T0,
        rng=os.urandom,
    )  # fmt: skip
    env.op.sync_now()
    _rotate(env, 0.01)
    admin.set_client_disabled(env.store, name="temp-during-salts", key_id=None, disabled=True)
    preparing, release = threading.Event(), threading.Event()
    prepare = OptOutIndex.prepare_salts

    def slow_prepare(index: OptOutIndex, salts: SaltSet, between: Any = None) -> SaltSwitch:
        preparing.set()
        assert release.wait(10)
        return prepare(index, salts, between)

    monkeypatch.setattr(OptOutIndex, "prepare_salts", slow_prepare)
    sync = threading.Thread(target=env.op.sync_now)
    sync.start()
    try:
        assert preparing.wait(10)
        with pytest.raises(ServiceError):  # already refused, salts still being prepared
            env.op.auth.authenticate(temp.api_key)
        own = threading.Thread(
            target=env.op.optouts.opt_out,
            args=(env.client("optout"), "email", "during-salts@example.com"),
        )
        own.start()
        own.join(5)
        assert not own.is_alive()  # not held up by the preparation
    finally:
        release.set()
        sync.join(10)
    _, flh = dii_flh("email", "during-salts@example.com", env.op.state.first_level_salt)
    raw = raw_uid2(flh, env.op.state.salts.salt(bucket_index(flh)))
    assert env.op.state.optouts.raw_opted_out_at(raw) is not None  # under the new salts


def _fresh_process(tmp_path: Path) -> tuple[StateLoader, OperatorState, OperatorStore]:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    store.close()
    serving = OperatorStore.open(tmp_path)
    loader = StateLoader(serving)
    return loader, loader.load(), serving


def test_an_opt_out_synced_with_a_rotation_is_streamed_under_the_new_salt(tmp_path: Path) -> None:
    # Another process rotates, then (having issued tokens under the new salt) records an
    # opt-out; this process syncs both at once. A stream open here must send the raw UID2 under
    # the new salt: with opt-outs read before the salts it sent only the old ones.
    loader, state, serving = _fresh_process(tmp_path)
    reader = admin.add_client(
        serving, site_id=300, name="ssp", roles=["ID_READER"], now_ms=T0, rng=os.urandom
    )
    loader.sync(state, force=True)  # its own connection's write: data_version does not move
    streamed: list[str] = []
    service = OptOutService(state, serving, ManualClock(T0))
    watching = threading.Event()

    def watch() -> None:
        client = state.clients[api_key_id(reader.api_key) or ""]
        for item in service.watch(client, 0, lambda: not watching.is_set()):
            if item is not None:
                streamed.append(item[0])

    stream = threading.Thread(target=watch, daemon=True)
    stream.start()
    other = OperatorStore.open(tmp_path)
    try:
        admin.rotate_salts(other, 1.0, T0 + 1, os.urandom)
        _, flh = dii_flh("email", "x.user@example.com", state.first_level_salt)
        other.add_optout(flh, lambda: T0 + 2)
        loader.sync(state)
        new_raw = base64.b64encode(raw_uid2(flh, state.salts.salt(bucket_index(flh)))).decode()
        assert wait_until(lambda: new_raw in streamed, 5.0, 0.02)
    finally:
        watching.set()
        stream.join(5)
        other.close()
        serving.close()


def test_other_processes_opt_outs_are_read_while_new_salts_are_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full rebuild takes seconds per million opt-outs. Read only after it, another process's
    # opt-outs reached this one (its tokens, its streams) 4-15 s late, and a stream reader
    # resuming a few seconds before the newest opt-out it had seen never got them.
    loader, state, serving = _fresh_process(tmp_path)
    other = OperatorStore.open(tmp_path)
    try:
        for i in range(4):
            _, flh = dii_flh("email", f"earlier{i}@example.com", state.first_level_salt)
            other.add_optout(flh, lambda: T0 + 1)
        loader.sync(state)
        monkeypatch.setattr(state_module, "PREPARE_CHUNK", 2)
        admin.rotate_salts(other, 1.0, T0 + 2, os.urandom)
        _, late = dii_flh("email", "late@example.com", state.first_level_salt)
        other.add_optout(late, lambda: T0 + 3)
        salts_when_read: list[SaltSet] = []
        add_synced = state.optouts.add_synced

        def recording(rows: list[OptOutRow]) -> int:
            if any(r.flh == late for r in rows):
                salts_when_read.append(state.salts)
            return add_synced(rows)

        monkeypatch.setattr(state.optouts, "add_synced", recording)
        before = state.salts
        assert set(loader.sync(state)) == {"salts", "optouts"}
        assert salts_when_read == [before]  # read during the preparation, not after it
        raw = raw_uid2(late, state.salts.salt(bucket_index(late)))
        assert state.optouts.raw_opted_out_at(raw) == T0 + 3  # and indexed under the new salts
    finally:
        other.close()
        serving.close()


def test_a_sync_that_fails_part_way_is_done_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader, state, serving = _fresh_process(tmp_path)
    other = OperatorStore.open(tmp_path)
    try:
        admin.rotate_salts(other, 0.01, T0 + 1, os.urandom)
        before = state.salts

        def failing() -> dict[str, bytes]:
            raise OSError("disk I/O error")

        with monkeypatch.context() as patch:
            patch.setattr(serving, "load_salt_blobs", failing)
            with pytest.raises(OSError):
                loader.sync(state)
        # Recorded as seen before the failure, the rotation stayed unseen until the next write.
        assert loader.sync(state) == ["salts"]
        assert state.salts is not before and state.salts.changed_buckets(before)
    finally:
        other.close()
        serving.close()


def test_a_bucket_keeps_its_salt_while_tokens_under_the_one_before_may_live(
    tmp_path: Path,
) -> None:
    """Rotated twice within a token's life, a bucket dropped the salt the token's raw UID2 came
    from, and an opt-out was no longer published under it: the official SDK still decrypted
    the token, and bidders took it (a reviewer's run). A bucket now keeps its salt for the
    longest a token under the salt before may be accepted, plus the clock skew."""
    loader, state, serving = _fresh_process(tmp_path)
    try:
        _, flh = dii_flh("email", "twice@example.com", state.first_level_salt)
        issued = raw_uid2(flh, state.salts.salt(bucket_index(flh)))  # what a token carries
        buckets = len(state.salts)
        assert admin.rotate_salts(serving, 1.0, T0, os.urandom) == buckets
        day_ms = 86_400_000
        assert admin.rotate_salts(serving, 1.0, T0 + day_ms, os.urandom) == 0  # all too young
        serving.add_optout(flh, lambda: T0 + day_ms)
        loader.sync(state, force=True)
        assert state.optouts.raw_opted_out_at(issued) == T0 + day_ms
        # Once the first rotation's tokens have all expired, the buckets rotate again.
        later = T0 + admin.salt_min_age_ms(0)
        assert admin.rotate_salts(serving, 1.0, later - 1, os.urandom) == 0
        assert admin.rotate_salts(serving, 1.0, later, os.urandom) == buckets
    finally:
        serving.close()
