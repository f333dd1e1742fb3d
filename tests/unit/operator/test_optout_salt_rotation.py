"""WatchOptOuts after a salt rotation: tokens issued before it still carry the raw UID2 under
the previous salt, so the stream sends that one too (audit: optout_after_salt_rotation)."""

from __future__ import annotations

import base64
import os
import threading

import pytest

from operator_svc import admin
from operator_svc.domain.dii import dii_flh
from operator_svc.domain.state import OptOutIndex, SaltSwitch
from svc_common.errors import ServiceError
from tests.unit.operator.conftest import T0, Env
from uid2_crypto.salts import SaltSet, bucket_index, raw_uid2


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
    admin.rotate_salts(env.store, 1.0, T0, os.urandom)
    env.op.sync_now()
    after = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(b))).decode()
    assert after != before
    assert {before, after} <= _backlog(env)


def test_status_knows_the_raw_uid2_under_the_previous_salt_too(env: Env) -> None:
    _, flh = dii_flh("email", "status@example.com", env.op.state.first_level_salt)
    b = bucket_index(flh)
    before = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(b))).decode()
    admin.rotate_salts(env.store, 1.0, T0, os.urandom)
    env.op.sync_now()
    after = base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(b))).decode()
    # Opted out after the rotation: a token issued before it still carries `before`.
    at = env.op.optouts.opt_out(env.client("optout"), "email", "status@example.com")
    status = env.op.optouts.opt_out_status(env.client("reader"), [before, after])
    assert sorted(status) == sorted([(before, at), (after, at)])


def test_a_never_opted_out_identity_stays_out_of_status_after_a_rotation(env: Env) -> None:
    # validate@example.com's opt-out is acknowledged but shown nowhere, new salts or not.
    env.op.optouts.opt_out(env.client("optout"), "email", "validate@example.com")
    admin.rotate_salts(env.store, 1.0, T0, os.urandom)
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
    admin.rotate_salts(env.store, 0.01, T0, os.urandom)
    admin.set_client_disabled(env.store, name="temp-during-salts", key_id=None, disabled=True)
    preparing, release = threading.Event(), threading.Event()
    prepare = OptOutIndex.prepare_salts

    def slow_prepare(index: OptOutIndex, salts: SaltSet) -> SaltSwitch:
        preparing.set()
        assert release.wait(10)
        return prepare(index, salts)

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
