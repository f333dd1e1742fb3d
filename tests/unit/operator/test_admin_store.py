from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from operator_svc import admin
from operator_svc.config import ConfigError, OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.domain.privacy import Privacy
from operator_svc.domain.tokens import GenerateStatus
from operator_svc.store import OperatorStore, StoreError
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.operator.conftest import T0, Env, another_writer_during_salt_rotation
from uid2_crypto.keys import MASTER_KEYSET_ID, REFRESH_KEYSET_ID
from uid2_crypto.salts import BUCKET_COUNT, SaltSet

DAY_S = 86_400


def test_init_is_idempotent(env: Env) -> None:
    before = env.store.meta("first_level_salt")
    assert not admin.initialise(env.store, T0, os.urandom)
    assert env.store.meta("first_level_salt") == before
    salts = SaltSet.from_blobs(env.store.load_salt_blobs())
    assert len(salts) == BUCKET_COUNT


def test_open_uninitialised(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        OperatorStore.open(tmp_path)


def test_api_keys_only_hashed(env: Env) -> None:
    raw = sqlite3.connect(env.store.path).execute("SELECT * FROM clients").fetchall()
    assert len(raw) == len(env.keys) > 0  # the keys' rows are there to look into
    text = repr(raw)
    for new in env.keys.values():
        assert new.api_key not in text
        assert new.api_key.split("-", 3)[3] not in text


def test_api_keys_carry_the_stores_scope_and_both_scopes_authenticate(
    env: Env, tmp_path: Path
) -> None:
    assert env.keys["gen"].api_key.startswith("UID2-C-")
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom, identity_scope="EUID")
    new = admin.add_client(
        store, site_id=10, name="eu", roles=["GENERATOR"], now_ms=T0, rng=os.urandom
    )
    assert new.api_key.startswith("EUID-C-")
    op = Operator(OperatorConfig(data_dir=tmp_path), store, clock=ManualClock(T0), rng=os.urandom)
    try:
        assert op.auth.authenticate(new.api_key).site_id == 10
        # The prefix only finds the row: the other scope's spelling of the same key is refused.
        with pytest.raises(ServiceError) as exc:
            op.auth.authenticate("UID2" + new.api_key[4:])
        assert exc.value.kind is ErrorKind.UNAUTHENTICATED
    finally:
        op.close()
    assert env.client("gen").site_id == 10


def test_bad_roles_and_sites() -> None:
    with pytest.raises(admin.AdminError):
        admin.parse_roles("GENERATOR,NOPE")
    with pytest.raises(admin.AdminError):
        admin.check_site_id(0)


def test_disable_client_takes_effect_after_sync(env: Env) -> None:
    extra = admin.add_client(
        env.store, site_id=60, name="temp", roles=["GENERATOR"], now_ms=T0, rng=os.urandom
    )
    env.op.sync_now()
    assert env.op.auth.authenticate(extra.api_key).name == "temp"
    admin.set_client_disabled(env.store, name="temp", key_id=None, disabled=True)
    assert "clients" in env.op.sync_now()
    with pytest.raises(ServiceError) as exc:
        env.op.auth.authenticate(extra.api_key)
    assert exc.value.kind is ErrorKind.UNAUTHENTICATED and exc.value.reason == "CLIENT_DISABLED"


def test_client_name_is_one_participant_on_one_site(env: Env) -> None:
    def add(site: int) -> admin.NewClient:
        return admin.add_client(
            env.store, site_id=site, name="rotating", roles=["GENERATOR"], now_ms=T0, rng=os.urandom
        )

    first, second = add(61), add(61)
    assert first.api_key != second.api_key
    with pytest.raises(admin.AdminError, match="already belongs to site 61"):
        add(62)
    assert [c["site_id"] for c in admin.list_clients(env.store) if c["name"] == "rotating"] == [
        61,
        61,
    ]


def test_site_domains_and_apps_are_checked_and_normalised(env: Env) -> None:
    site = admin.add_site(
        env.store, 71, "s71", [" News.Example.COM", "news.example.com."], ["com.s71.app"], T0,
        os.urandom,
    )  # fmt: skip
    assert site.domains == ("news.example.com",) and site.app_names == ("com.s71.app",)
    for domains, apps in ((["https://x.example/"], []), ([""], []), ([], ["com s71"])):
        with pytest.raises(admin.AdminError, match="not a"):
            admin.add_site(env.store, 71, "s71", domains, apps, T0, os.urandom)
    # A public suffix would let every site under it through the client-side origin check.
    with pytest.raises(admin.AdminError, match="public suffix"):
        admin.add_site(env.store, 71, "s71", ["co.uk"], [], T0, os.urandom)
    env.op.sync_now()
    assert env.op.state.sites[71].domains == ("news.example.com",)  # unchanged by the refusals


def test_revoke_delegation(env: Env) -> None:
    admin.add_site(env.store, 70, "s70", [], [], T0, os.urandom)
    admin.grant_delegation(env.store, 70, "sso", T0)
    env.op.sync_now()
    ok = Privacy(True, "")
    sso = env.client("sso")
    assert env.op.tokens.generate(sso, "email", "x@y.com", ok, 70).status is GenerateStatus.SUCCESS
    admin.revoke_delegation(env.store, 70, "sso")
    env.op.sync_now()
    with pytest.raises(ServiceError) as exc:
        env.op.tokens.generate(sso, "email", "x@y.com", ok, 70)
    assert exc.value.kind is ErrorKind.PERMISSION_DENIED
    with pytest.raises(admin.AdminError):
        admin.grant_delegation(env.store, 999, "sso", T0)


def test_key_rotation_and_pruning(tmp_path: Path) -> None:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    t0 = T0 // 1000
    lifetimes = {"activation_delay_s": 3600, "refresh_lifetime_s": 40 * DAY_S}
    report = admin.rotate_keys(store, now_ms=T0, rng=os.urandom, **lifetimes)
    assert report.created == 3 and report.pruned == 0 and report.activates == t0 + 3600
    rows = store.key_rows()
    old_master = next(k for k in rows if k.keyset_id == MASTER_KEYSET_ID and k.activates_s == t0)
    old_refresh = next(k for k in rows if k.keyset_id == REFRESH_KEYSET_ID and k.activates_s == t0)
    # A master key's tokens include sharers', accepted for 30 days (not the token's 3).
    assert old_master.expires_s == t0 + 3600 + 30 * DAY_S + 1800
    assert old_refresh.expires_s == t0 + 3600 + 40 * DAY_S + 1800
    # After the old master's tokens all expired, the next rotation prunes it (not the refresh key).
    later = (old_master.expires_s + 1) * 1000
    report2 = admin.rotate_keys(store, now_ms=later, rng=os.urandom, **lifetimes)
    ids = {k.key_id for k in store.key_rows()}
    assert old_master.key_id not in ids and old_refresh.key_id in ids
    assert report2.pruned == 2
    store.close()


def test_a_late_rotation_keeps_the_key_in_use_a_whole_token_lifetime_past_its_last_use(
    tmp_path: Path,
) -> None:
    """Review: keys rotated a day before they run out (init's keys live 365 days). Their expiry
    only ever went down, so the key in use until the new one activates kept its old expiry, and
    tokens it encrypted in its last days stopped decrypting days early. It is now kept as long as
    any superseded key; one superseded before (not in use until then) is not kept longer."""
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    t0 = T0 // 1000
    late = (t0 + 364 * DAY_S) * 1000  # a day before init's keys expire
    first = admin.rotate_keys(store, now_ms=late, rng=os.urandom, activation_delay_s=3600)
    for keyset in (MASTER_KEYSET_ID, REFRESH_KEYSET_ID):
        init_key = next(
            k for k in store.key_rows() if k.keyset_id == keyset and k.activates_s == t0
        )
        assert init_key.expires_s == first.activates + 30 * DAY_S + 1800 > t0 + 365 * DAY_S
    # Ten minutes on, another rotation: the key the first added is the one in use until the
    # new one activates; init's key, superseded already, keeps the expiry it had.
    second = admin.rotate_keys(
        store, now_ms=late + 600_000, rng=os.urandom, activation_delay_s=3600
    )
    for keyset in (MASTER_KEYSET_ID, REFRESH_KEYSET_ID):
        rows = [k for k in store.key_rows() if k.keyset_id == keyset]
        init_key = next(k for k in rows if k.activates_s == t0)
        pending = next(k for k in rows if k.activates_s == first.activates)
        assert init_key.expires_s == first.activates + 30 * DAY_S + 1800
        assert pending.expires_s == second.activates + 30 * DAY_S + 1800
    store.close()


def test_two_rotations_in_one_second_leave_the_first_ones_keys_their_lifetime(
    tmp_path: Path,
) -> None:
    """The first's new keys activate with the second's: not superseded, so not cut to the
    retention (mutation review: untested)."""
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    first = admin.rotate_keys(store, now_ms=T0 + 1000, rng=os.urandom, activation_delay_s=3600)
    admin.rotate_keys(store, now_ms=T0 + 1500, rng=os.urandom, activation_delay_s=3600)
    new = [k for k in store.key_rows() if k.activates_s == first.activates]
    assert len(new) > 2 and all(k.expires_s > first.activates + 300 * DAY_S for k in new)
    store.close()


def test_a_key_is_pruned_at_its_expiry_second(tmp_path: Path) -> None:
    """Published while activates <= now < expires (reference §5): at `expires` it is gone."""
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    first = admin.rotate_keys(store, now_ms=T0, rng=os.urandom, activation_delay_s=60)
    superseded = [k for k in store.key_rows() if k.activates_s < first.activates]
    last = max(k.expires_s for k in superseded)
    report = admin.rotate_keys(store, now_ms=last * 1000, rng=os.urandom, activation_delay_s=60)
    assert report.pruned >= 1
    assert all(k.expires_s > last for k in store.key_rows())
    store.close()


def test_key_retention_follows_the_clock_skew_serve_allows(tmp_path: Path) -> None:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    t0 = T0 // 1000
    admin.rotate_keys(store, now_ms=T0, rng=os.urandom, activation_delay_s=60, clock_skew_s=7200)
    old_master = next(
        k for k in store.key_rows() if k.keyset_id == MASTER_KEYSET_ID and k.activates_s == t0
    )
    assert old_master.expires_s == t0 + 60 + 30 * DAY_S + 7200
    store.close()


def test_key_retention_covers_the_longest_a_token_is_accepted(tmp_path: Path) -> None:
    """serve's --max-bidstream-lifetime beyond a sharer's 30 days keeps superseded master and
    site keys that much longer: a token still accepted must still decrypt."""
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    t0 = T0 // 1000
    admin.rotate_keys(
        store, now_ms=T0, rng=os.urandom, activation_delay_s=60, accepted_lifetime_s=45 * DAY_S
    )
    old = [k for k in store.key_rows() if k.activates_s == t0 and k.keyset_id != REFRESH_KEYSET_ID]
    assert old and all(k.expires_s == t0 + 60 + 45 * DAY_S + 1800 for k in old)
    store.close()


def test_key_retention_covers_tokens_a_serve_issued_with_a_longer_lifetime(tmp_path: Path) -> None:
    """A serve once ran with 60-day tokens, the rotation now with the default 3 days: their keys
    must stay as long as the containers say such tokens are accepted (the recorded longest)."""
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    store.note_lifetimes(60 * DAY_S, 30 * DAY_S)
    t0 = T0 // 1000
    admin.rotate_keys(store, now_ms=T0, rng=os.urandom, activation_delay_s=60)
    old = [k for k in store.key_rows() if k.activates_s == t0 and k.keyset_id != REFRESH_KEYSET_ID]
    assert old and all(k.expires_s == t0 + 60 + 60 * DAY_S + 1800 for k in old)
    store.close()


def test_refresh_key_retention_covers_refresh_tokens_a_serve_issued_for_longer(
    tmp_path: Path,
) -> None:
    """A serve once ran with 90-day refresh tokens, the rotation now with the default 30 days:
    the superseded refresh key must decrypt those refresh tokens until they expire, or their
    users would be told INVALID_TOKEN, not EXPIRED_TOKEN, and lose their identity early."""
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    store.note_lifetimes(3 * DAY_S, 90 * DAY_S)
    store.note_lifetimes(3 * DAY_S, 30 * DAY_S)  # a later, shorter serve: the longest stays
    t0 = T0 // 1000
    admin.rotate_keys(store, now_ms=T0, rng=os.urandom, activation_delay_s=60)
    old = [k for k in store.key_rows() if k.activates_s == t0 and k.keyset_id == REFRESH_KEYSET_ID]
    assert old and all(k.expires_s == t0 + 60 + 90 * DAY_S + 1800 for k in old)
    store.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation_delay_s": 10**20},
        {"activation_delay_s": -1},
        {"activation_delay_s": 0},
        {"token_lifetime_s": -100_000, "refresh_lifetime_s": -100_000},
        {"token_lifetime_s": 0},
        {"refresh_lifetime_s": 10**20},
        {"clock_skew_s": -1},
    ],
)
def test_key_rotation_rejects_lifetimes_that_would_prune_live_keys(
    tmp_path: Path, kwargs: dict[str, int]
) -> None:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    before = store.key_rows()
    with pytest.raises((admin.AdminError, ConfigError)):
        admin.rotate_keys(store, now_ms=T0, rng=os.urandom, **kwargs)
    assert store.key_rows() == before
    store.close()


def test_an_own_opt_out_does_not_hide_another_processs_earlier_one(env: Env) -> None:
    """B records an opt-out before it has synced one A recorded just earlier (a lower sequence
    number): B's next sync must still read A's. (Once, B's own moved its read position past it,
    and B issued tokens for A's opted-out user for good.)"""
    other = Operator(
        OperatorConfig(data_dir=env.dir),
        OperatorStore.open(env.dir),
        clock=ManualClock(T0),
        rng=os.urandom,
    )
    try:
        other.sync_now()
        env.op.optouts.opt_out(env.client("optout"), "email", "via-a@example.com")
        other.optouts.opt_out(
            other.auth.authenticate(env.keys["optout"].api_key), "email", "via-b@example.com"
        )
        other.sync_now()
        gen = other.auth.authenticate(env.keys["gen"].api_key)
        for email in ("via-a@example.com", "via-b@example.com"):
            out = other.tokens.generate(gen, "email", email, Privacy(True, ""))
            assert out.status is GenerateStatus.OPTOUT, email
    finally:
        other.close()


def test_two_operators_share_optouts(env: Env) -> None:
    clock = ManualClock(T0)
    other = Operator(
        OperatorConfig(data_dir=env.dir), OperatorStore.open(env.dir), clock=clock, rng=os.urandom
    )
    try:
        env.op.optouts.opt_out(env.client("optout"), "email", "shared@example.com")
        assert "optouts" in other.sync_now()
        out = other.tokens.generate(
            other.auth.authenticate(env.keys["gen"].api_key),
            "email",
            "shared@example.com",
            Privacy(True, ""),
        )
        assert out.status is GenerateStatus.OPTOUT
    finally:
        other.close()


def test_concurrent_salt_rotations_both_count(tmp_path: Path) -> None:
    """Two `salts rotate --fraction 0.5` at once (two connections, as two CLI runs) rotate every
    bucket between them: neither overwrites the other's work."""
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    before = SaltSet.from_blobs(store.load_salt_blobs())
    stores = [OperatorStore.open(tmp_path) for _ in range(2)]
    start = threading.Barrier(2)

    def rotate(s: OperatorStore) -> None:
        start.wait()
        admin.rotate_salts(s, 0.5, T0 + DAY_S * 1000, os.urandom)

    threads = [threading.Thread(target=rotate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = SaltSet.from_blobs(store.load_salt_blobs())
    sample = range(0, BUCKET_COUNT, 997)
    assert all(after.salt(i) != before.salt(i) for i in sample)
    for s in (store, *stores):
        s.close()


def test_a_salt_rotation_is_computed_outside_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading, rotating and serialising 2^20 buckets under the lock held every opt-out write
    # back 1.5-3 s. Another writer must get in while the rotation is computed.
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    try:
        with another_writer_during_salt_rotation(tmp_path, monkeypatch) as wrote:
            assert admin.rotate_salts(store, 0.01, T0 + DAY_S * 1000, os.urandom) > 0
    finally:
        store.close()
    assert wrote == [True]


def test_a_prepared_salt_rotation_overtaken_by_another_is_done_again(tmp_path: Path) -> None:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    before = SaltSet.from_blobs(store.load_salt_blobs())
    prepared = admin.prepare_salt_rotation(store, 0.5, T0 + DAY_S * 1000, os.urandom)
    admin.rotate_salts(store, 0.5, T0 + DAY_S * 1000, os.urandom)  # commits first
    with store.transaction() as conn:
        admin.rotate_salts_in(conn, 0.5, T0 + DAY_S * 1000, os.urandom, prepared=prepared)
    after = SaltSet.from_blobs(store.load_salt_blobs())
    store.close()
    # Written as prepared, it would have redone the same oldest half and left the other.
    assert all(after.salt(i) != before.salt(i) for i in range(0, BUCKET_COUNT, 997))


def test_keypairs_reach_a_running_operator_and_disabling_them_too(env: Env) -> None:
    pair = admin.add_keypair(env.store, 12, T0, os.urandom)
    assert "keypairs" in env.op.sync_now()
    held = env.op.state.keypairs[pair["subscription_id"]]
    assert held.site_id == 12 and not held.disabled
    assert held.server.public_key_text("UID2") == pair["public_key"]
    admin.set_keypair_disabled(env.store, pair["subscription_id"], True)
    assert "keypairs" in env.op.sync_now()
    assert env.op.state.keypairs[pair["subscription_id"]].disabled
    listed = [
        p for p in admin.list_keypairs(env.store) if p["subscription_id"] == pair["subscription_id"]
    ]
    assert listed == [
        {
            "subscription_id": pair["subscription_id"],
            "site_id": 12,
            "public_key": pair["public_key"],
            "disabled": True,
            "created": T0,
        }
    ]
    # The private key is only ever in the store, never in what admin prints or a repr.
    (row,) = [r for r in env.store.keypairs() if r.subscription_id == pair["subscription_id"]]
    scalar = held.server.private_key.private_numbers().private_value.to_bytes(32, "big")
    shown = " ".join([json.dumps(listed), json.dumps(pair), repr(held), repr(row)])
    for secret in (row.private_key, scalar):
        assert base64.b64encode(secret).decode() not in shown
        assert secret.hex() not in shown.lower()
    assert "server=" not in repr(held) and "private_key=" not in repr(row)


def test_keypairs_need_an_existing_site_and_ids_are_ten_alphanumerics(env: Env) -> None:
    with pytest.raises(admin.AdminError, match="no site 999"):
        admin.add_keypair(env.store, 999, T0, os.urandom)
    with pytest.raises(admin.AdminError, match="no such subscription"):
        admin.set_keypair_disabled(env.store, "nope", True)
    ids = {admin.add_keypair(env.store, 12, T0, os.urandom)["subscription_id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(len(i) == 10 and i.isalnum() and i.isascii() for i in ids)


def test_a_store_from_before_keypairs_reads_none_and_gets_the_table_on_first_add(
    tmp_path: Path,
) -> None:
    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    admin.add_site(store, 12, "s", ["s.example"], [], T0, os.urandom)
    with store.transaction() as conn:
        conn.execute("DROP TABLE keypairs")  # as a store made by the release before
    store.close()
    store = OperatorStore.open(tmp_path)
    try:
        assert store.keypairs() == []
        op = Operator(
            OperatorConfig(data_dir=tmp_path), store, clock=ManualClock(T0), rng=os.urandom
        )
        try:
            assert dict(op.state.keypairs) == {}
            pair = admin.add_keypair(store, 12, T0, os.urandom)
            assert "keypairs" in op.sync_now()
            assert pair["subscription_id"] in op.state.keypairs
        finally:
            op.close()
    finally:
        store.close()


def test_keys_rotate_keeps_old_keys_as_long_as_serves_bid_stream_lifetime(tmp_path: Path) -> None:
    """The manual rotation reads serve's --max-bidstream-lifetime (its variable) as it reads
    the other lifetimes: a 40-day bid-stream token must outlive its key's successor."""
    from operator_svc import cli

    store = OperatorStore.create(tmp_path)
    admin.initialise(store, T0, os.urandom)
    store.close()
    argv = ["keys", "rotate", "--data-dir", str(tmp_path), "--activation-delay", "60"]
    assert cli.main([*argv, "--max-bidstream-lifetime", str(40 * DAY_S)]) == 0
    store = OperatorStore.open(tmp_path)
    try:
        first = min(k.activates_s for k in store.key_rows())
        old = [
            k
            for k in store.key_rows()
            if k.keyset_id == MASTER_KEYSET_ID and k.activates_s == first
        ]
        (key,) = old
        assert key.expires_s - key.activates_s > 40 * DAY_S
    finally:
        store.close()
