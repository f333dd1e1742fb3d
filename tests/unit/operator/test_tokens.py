from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest

from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.domain.privacy import Privacy
from operator_svc.domain.tokens import GenerateStatus, RefreshStatus
from operator_svc.store import OperatorStore
from svc_common.clock import ManualClock
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.operator.conftest import T0, Env
from uid2_crypto.identity import IdentityScope, IdentityType, identity_hash
from uid2_crypto.keys import FALLBACK_SITE_ID, MASTER_KEYSET_ID, REFRESH_KEYSET_ID, KeyRing
from uid2_crypto.refresh import RefreshPayload, encode_refresh_token
from uid2_crypto.salts import bucket_index, first_level_hash, raw_uid2
from uid2_crypto.tokens import TokenDecoder

OK = Privacy(transparency_notice_accepted=True)
HOUR = 3_600_000
DAY = 24 * HOUR


def _raw_uid(env: Env, kind: str, value: str) -> str:
    flh = first_level_hash(identity_hash(kind, value)[1], env.op.state.first_level_salt)
    return base64.b64encode(raw_uid2(flh, env.op.state.salts.salt(bucket_index(flh)))).decode()


def _decoder(env: Env) -> TokenDecoder:
    return TokenDecoder(
        env.op.state.keys.keyring, max_bidstream_lifetime_s=None, max_sharing_lifetime_s=None
    )


def test_generate_lifetimes_and_payload(env: Env) -> None:
    out = env.op.tokens.generate(env.client("gen"), "email", "Alice@Example.com", OK)
    assert out.status is GenerateStatus.SUCCESS and out.identity is not None
    ident = out.identity
    assert ident.identity_expires == T0 + 3 * DAY
    assert ident.refresh_from == T0 + HOUR
    assert ident.refresh_expires == T0 + 30 * DAY
    assert ident.advertising_token.startswith("A4")
    assert len(ident.refresh_token) == 388
    assert len(base64.b64decode(ident.refresh_response_key)) == 32
    res = _decoder(env).decrypt(ident.advertising_token, T0)
    assert res.success and res.site_id == 10
    assert res.raw_uid == _raw_uid(env, "email", "alice@example.com")
    assert res.privacy_bits == 1 and res.established_ms == T0


def test_hash_forms_are_the_same_identity(env: Env) -> None:
    h = base64.b64encode(identity_hash("phone", "+15551234567")[1]).decode()
    a = env.op.tokens.generate(env.client("gen"), "phone", "+15551234567", OK)
    b = env.op.tokens.generate(env.client("gen"), "phone_hash", h, OK)
    c = env.op.tokens.generate(env.client("gen"), "phone_hash", base64.b64decode(h).hex(), OK)
    d = _decoder(env)
    uids = {d.decrypt(x.identity.advertising_token, T0).raw_uid for x in (a, b, c)}  # type: ignore[union-attr]  # a None fails the test here anyway
    assert len(uids) == 1


def test_refresh_chain_keeps_site_and_established(env: Env) -> None:
    first = env.op.tokens.generate(env.client("gen"), "email", "chain@example.com", OK).identity
    assert first is not None
    token, keys = first.refresh_token, {first.refresh_response_key}
    for i in range(1, 4):
        env.clock.set(T0 + i * HOUR)
        out = env.op.tokens.refresh(token)
        assert out.status is RefreshStatus.SUCCESS and out.identity is not None
        res = _decoder(env).decrypt(out.identity.advertising_token, T0 + i * HOUR)
        assert res.site_id == 10 and res.established_ms == T0
        assert res.raw_uid == _raw_uid(env, "email", "chain@example.com")
        assert out.identity.refresh_from == T0 + i * HOUR + HOUR
        keys.add(out.identity.refresh_response_key)
        token = out.identity.refresh_token
    assert len(keys) == 4


def test_refresh_expired_invalid(env: Env) -> None:
    ident = env.op.tokens.generate(env.client("gen"), "email", "exp@example.com", OK).identity
    assert ident is not None
    # refresh_expires is the last millisecond the refresh token works.
    env.clock.set(ident.refresh_expires)
    assert env.op.tokens.refresh(ident.refresh_token).status is RefreshStatus.SUCCESS
    env.clock.set(ident.refresh_expires + 1)
    assert env.op.tokens.refresh(ident.refresh_token).status is RefreshStatus.EXPIRED_TOKEN
    env.clock.set(T0 + 31 * DAY)
    assert env.op.tokens.refresh(ident.refresh_token).status is RefreshStatus.EXPIRED_TOKEN
    env.clock.set(T0)
    tampered = (
        ident.refresh_token[:100]
        + ("A" if ident.refresh_token[100] != "A" else "B")
        + ident.refresh_token[101:]
    )
    for bad in ("", "x", tampered, ident.advertising_token, "A" * 388, "é" * 388):
        assert env.op.tokens.refresh(bad).status is RefreshStatus.INVALID_TOKEN


def test_optout_then_generate_refresh_map(env: Env) -> None:
    ident = env.op.tokens.generate(env.client("gen"), "email", "leaver@example.com", OK).identity
    assert ident is not None
    ts = env.op.optouts.opt_out(env.client("optout"), "email", "Leaver@example.com")
    assert ts == T0
    assert env.op.tokens.refresh(ident.refresh_token).status is RefreshStatus.OPTOUT
    assert (
        env.op.tokens.generate(env.client("gen"), "email", "leaver@example.com", OK).status
        is GenerateStatus.OPTOUT
    )
    env.clock.advance(5000)
    assert env.op.optouts.opt_out(env.client("optout"), "email", "leaver@example.com") == T0
    raw = _raw_uid(env, "email", "leaver@example.com")
    assert env.op.optouts.opt_out_status(env.client("optout"), [raw]) == [(raw, T0)]


def _refresh_token_in_scope(env: Env, scope: IdentityScope) -> str:
    key = env.op.state.keys.keyring.active_key(REFRESH_KEYSET_ID, T0 // 1000)
    assert key is not None
    payload = RefreshPayload(
        expires_ms=T0 + DAY,
        created_ms=T0,
        operator_site_id=1,
        site_id=10,
        publisher_id=0,
        client_key_id=1,
        privacy_bits=1,
        established_ms=T0,
        identity_type=IdentityType.EMAIL,
        identity_scope=scope,
        first_level_hash=first_level_hash(identity_hash("email", "scope@example.com")[1], "x"),
    )
    return encode_refresh_token(payload, key, os.urandom)[0]


def test_refresh_refuses_a_token_of_another_identity_scope(env: Env) -> None:
    # Made with this operator's own refresh key, so only the scope tells them apart.
    assert env.op.state.identity_scope is IdentityScope.UID2
    same = _refresh_token_in_scope(env, IdentityScope.UID2)
    assert env.op.tokens.refresh(same).status is RefreshStatus.SUCCESS
    other = _refresh_token_in_scope(env, IdentityScope.EUID)
    assert env.op.tokens.refresh(other).status is RefreshStatus.INVALID_TOKEN


@pytest.mark.parametrize(
    "kind, value", [("email", "optout@example.com"), ("phone", "+00000000000")]
)
def test_test_identity_always_optout(env: Env, kind: str, value: str) -> None:
    assert (
        env.op.tokens.generate(env.client("gen"), kind, value, OK).status is GenerateStatus.OPTOUT
    )
    h = base64.b64encode(identity_hash(kind, value)[1]).decode()
    out = env.op.tokens.generate(env.client("gen"), kind + "_hash", h, OK)
    assert out.status is GenerateStatus.OPTOUT


@pytest.mark.parametrize(
    "kind, value", [("email", "refresh-optout@example.com"), ("phone", "+00000000002")]
)
def test_test_identity_refresh_optout(env: Env, kind: str, value: str) -> None:
    out = env.op.tokens.generate(env.client("gen"), kind, value, OK)
    assert out.status is GenerateStatus.SUCCESS and out.identity is not None
    assert env.op.tokens.refresh(out.identity.refresh_token).status is RefreshStatus.OPTOUT


@pytest.mark.parametrize(
    "kind, value", [("email", "validate@example.com"), ("phone", "+12345678901")]
)
def test_test_identity_never_optout(env: Env, kind: str, value: str) -> None:
    """Its opt-out is acknowledged, as the official operator does, yet it shows nowhere: not in
    generate, refresh or map, and not in opt-out status or the stream readers act on."""
    optouts = env.op.optouts
    assert optouts.opt_out(env.client("optout"), kind, value) == T0
    out = env.op.tokens.generate(env.client("gen"), kind, value, OK)
    assert out.status is GenerateStatus.SUCCESS and out.identity is not None
    assert env.op.tokens.refresh(out.identity.refresh_token).status is RefreshStatus.SUCCESS
    raw_uid = env.op.mapper.map_identity(env.client("mapper"), [(kind, value)])[0].raw_uid
    assert raw_uid
    optouts.opt_out(env.client("optout"), "email", f"leaver-{kind}@example.com")  # a real one
    assert optouts.opt_out_status(env.client("reader"), [raw_uid]) == []
    watched = optouts.watch(env.client("reader"), T0, lambda: False)
    streamed = [item[0] for item in watched if item is not None]
    assert streamed and raw_uid not in streamed


def test_consent_refused(env: Env) -> None:
    out = env.op.tokens.generate(env.client("gen"), "email", "a@b.com", Privacy(False, ""))
    assert out.status is GenerateStatus.INSUFFICIENT_CONSENT and out.identity is None
    with pytest.raises(ServiceError) as exc:
        env.op.tokens.generate(env.client("gen"), "email", "a@b.com", Privacy(True, "@@"))
    assert exc.value.reason == "INVALID_TCF_CONSENT_STRING"


def test_delegation(env: Env) -> None:
    out = env.op.tokens.generate(env.client("sso"), "email", "d@example.com", OK, 12)
    assert out.status is GenerateStatus.SUCCESS and out.identity is not None
    res = _decoder(env).decrypt(out.identity.advertising_token, T0)
    assert res.site_id == 12
    site12_keyset = env.op.state.keys.default_keyset[12]
    site_key = env.op.state.keys.keyring.active_key(site12_keyset, T0 // 1000)
    assert site_key is not None and res.site_key_site_id == 12
    refreshed = env.op.tokens.refresh(out.identity.refresh_token)
    assert refreshed.site_id == 12
    with pytest.raises(ServiceError) as exc:
        env.op.tokens.generate(env.client("other"), "email", "d@example.com", OK, 12)
    assert exc.value.kind is ErrorKind.PERMISSION_DENIED and exc.value.reason == "NO_DELEGATION"
    for bad_site in (-1, -12):
        with pytest.raises(ServiceError) as exc:
            env.op.tokens.generate(env.client("sso"), "email", "d@example.com", OK, bad_site)
        assert exc.value.kind is ErrorKind.INVALID_ARGUMENT
        assert exc.value.reason == "INVALID_SITE_ID"


def test_validate(env: Env) -> None:
    ident = env.op.tokens.generate(env.client("gen"), "email", "v@example.com", OK).identity
    assert ident is not None
    tok = ident.advertising_token
    assert env.op.tokens.validate(env.client("gen"), tok, "email", "V@example.com")
    assert not env.op.tokens.validate(env.client("gen"), tok, "email", "w@example.com")
    assert not env.op.tokens.validate(env.client("other"), tok, "email", "v@example.com")
    assert not env.op.tokens.validate(env.client("gen"), "garbage-token", "email", "v@example.com")


@pytest.mark.parametrize(
    "kind, value, reason",
    [
        ("email", "a@ba@z.com", "INVALID_EMAIL"),
        ("phone", "+123456789", "INVALID_PHONE"),
        ("email_hash", "abc", "INVALID_EMAIL_HASH"),
        ("", "", "MISSING_DII"),
    ],
)
def test_invalid_dii(env: Env, kind: str, value: str, reason: str) -> None:
    with pytest.raises(ServiceError) as exc:
        env.op.tokens.generate(env.client("gen"), kind, value, OK)
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT and exc.value.reason == reason


def test_roles(env: Env) -> None:
    with pytest.raises(ServiceError) as exc:
        env.op.tokens.generate(env.client("mapper"), "email", "a@b.com", OK)
    assert exc.value.kind is ErrorKind.PERMISSION_DENIED
    assert (
        env.op.tokens.generate(env.client("admin"), "email", "a@b.com", OK).status
        is GenerateStatus.SUCCESS
    )
    for bad in (None, "", "UID2-C-nope-x", env.keys["gen"].api_key + "x", "junk"):
        with pytest.raises(ServiceError) as exc:
            env.op.auth.authenticate(bad)
        assert exc.value.kind is ErrorKind.UNAUTHENTICATED


def test_clock_and_randomness_come_from_the_constructor(env: Env) -> None:
    """Two operators given the same clock and the same byte source issue byte-identical
    identities: nothing inside the domain reads the system clock or os.urandom."""

    def zeros(n: int) -> bytes:
        return bytes(n)

    clock = ManualClock(T0 + 5 * HOUR)
    issued = []
    for _ in range(2):
        op = Operator(
            OperatorConfig(data_dir=env.dir), OperatorStore.open(env.dir), clock=clock, rng=zeros
        )
        try:
            client = op.auth.authenticate(env.keys["gen"].api_key)
            out = op.tokens.generate(client, "email", "fixed@example.com", OK)
        finally:
            op.close()
        assert out.identity is not None
        issued.append(out.identity)
    assert issued[0] == issued[1]
    assert issued[0].identity_expires == T0 + 5 * HOUR + 3 * DAY
    assert base64.b64decode(issued[0].refresh_response_key) == bytes(32)


@contextlib.contextmanager
def _keys_replaced(env: Env, **changes: Any) -> Iterator[None]:
    """The operator's key snapshot with `changes` for the block, then the real one again."""
    state = env.op.state
    snap = state.keys
    state.keys = dataclasses.replace(snap, **changes)
    try:
        yield
    finally:
        state.keys = snap


def test_a_site_without_a_keyset_of_its_own_gets_the_fallback_keysets_key(env: Env) -> None:
    # Every site `admin` makes has a default keyset; a site without one (a store made by hand
    # or by an older version) is issued tokens under the fallback keyset's key, not refused.
    snap = env.op.state.keys
    without = {site: ks for site, ks in snap.default_keyset.items() if site != 10}
    with _keys_replaced(env, default_keyset=MappingProxyType(without)):
        out = env.op.tokens.generate(env.client("gen"), "email", "fallback@example.com", OK)
    assert out.status is GenerateStatus.SUCCESS and out.identity is not None
    result = _decoder(env).decrypt(out.identity.advertising_token, T0)
    assert result.success
    assert (result.site_id, result.site_key_site_id) == (10, FALLBACK_SITE_ID)


def test_no_token_outlives_the_keys_that_encrypted_it(env: Env) -> None:
    """Keys running out with no rotation (they expire 365 days after init): a token issued a
    day before stops at the last millisecond its keys are published, as do its refresh token and
    refresh_from, instead of stating three days and failing to decrypt (the keys gone from every
    container) from the third day's start. Review: KEYS_NOT_SYNCED from the SDK and ours."""
    run_out_ms = (T0 // 1000 + 365 * 86_400) * 1000
    env.clock.set(run_out_ms - DAY)
    out = env.op.tokens.generate(env.client("gen"), "email", "late@example.com", OK)
    assert out.identity is not None
    ident = out.identity
    assert ident.identity_expires == ident.refresh_expires == run_out_ms - 1
    assert ident.refresh_from == run_out_ms - DAY + HOUR
    result = _decoder(env).decrypt(ident.advertising_token, run_out_ms - 1)
    assert result.success and result.expires_ms == run_out_ms - 1
    # Within an hour of the run-out, refresh_from is never after the token's own expiry.
    env.clock.set(run_out_ms - 60_000)
    late = env.op.tokens.generate(env.client("gen"), "email", "later@example.com", OK).identity
    assert late is not None and late.refresh_from == late.identity_expires == run_out_ms - 1


@pytest.mark.parametrize("runs_out", ["master", "site", "refresh"])
def test_a_token_ends_with_whichever_of_its_keys_runs_out_first(env: Env, runs_out: str) -> None:
    """Each of the three keys bounds the identity on its own (mutation review: the one test
    had all three run out together, so any one could be left out of the bound unnoticed)."""
    snap = env.op.state.keys
    keyset = {
        "master": MASTER_KEYSET_ID,
        "site": snap.default_keyset[10],
        "refresh": REFRESH_KEYSET_ID,
    }[runs_out]
    cut_s = T0 // 1000 + 86_400  # a day off; the others 365, the token three
    keys = [
        dataclasses.replace(k, expires=cut_s) if k.keyset_id == keyset else k
        for k in snap.keyring.keys
    ]
    with _keys_replaced(env, keyring=KeyRing(keys)):
        out = env.op.tokens.generate(env.client("gen"), "email", f"{runs_out}@example.com", OK)
    assert out.identity is not None
    assert out.identity.identity_expires == cut_s * 1000 - 1
    if runs_out == "refresh":
        assert out.identity.refresh_expires == cut_s * 1000 - 1
    else:
        assert out.identity.refresh_expires == T0 + 30 * DAY


def test_no_active_key_is_unavailable_not_a_crash(env: Env) -> None:
    # Nobody ran `uid2-operator keys rotate` for longer than a key lives: every key expired.
    env.clock.set(T0 + 366 * DAY)
    with pytest.raises(ServiceError) as exc:
        env.op.tokens.generate(env.client("gen"), "email", "late@example.com", OK)
    assert (exc.value.kind, exc.value.reason) == (ErrorKind.UNAVAILABLE, "NO_ACTIVE_KEY")
    # The master and refresh keys current, but no site key, not even a fallback one.
    env.clock.set(T0)
    snap = env.op.state.keys
    without = {s: ks for s, ks in snap.default_keyset.items() if s not in (10, FALLBACK_SITE_ID)}
    with (
        _keys_replaced(env, default_keyset=MappingProxyType(without)),
        pytest.raises(ServiceError) as exc,
    ):
        env.op.tokens.generate(env.client("gen"), "email", "late@example.com", OK)
    assert (exc.value.kind, exc.value.reason) == (ErrorKind.UNAVAILABLE, "NO_ACTIVE_KEY")


@pytest.mark.parametrize(
    "missing", [MASTER_KEYSET_ID, REFRESH_KEYSET_ID], ids=["master", "refresh"]
)
def test_no_active_master_or_refresh_key_is_unavailable(env: Env, missing: int) -> None:
    # The site's key is current but one of the operator's own is not (a store whose master or
    # refresh keys were pruned by hand): no token is issued without both layers' keys.
    kept = [k for k in env.op.state.keys.keyring.keys if k.keyset_id != missing]
    with _keys_replaced(env, keyring=KeyRing(kept)), pytest.raises(ServiceError) as exc:
        env.op.tokens.generate(env.client("gen"), "email", "half@example.com", OK)
    assert (exc.value.kind, exc.value.reason) == (ErrorKind.UNAVAILABLE, "NO_ACTIVE_KEY")


@pytest.mark.parametrize(
    "raw_uid",
    [
        "",
        "A" * 43,  # too short
        "*" * 44,  # the right length, not base64
        "é" * 44,  # the right length, not even ASCII
        "AAAA" * 10 + "AA==",  # base64, but 31 bytes
    ],
)
def test_opt_out_status_refuses_what_is_not_a_raw_uid2(env: Env, raw_uid: str) -> None:
    good = base64.b64encode(bytes(32)).decode()
    assert env.op.optouts.opt_out_status(env.client("reader"), [good]) == []
    with pytest.raises(ServiceError) as exc:
        env.op.optouts.opt_out_status(env.client("reader"), [good, raw_uid])
    assert (exc.value.kind, exc.value.reason) == (ErrorKind.INVALID_ARGUMENT, "INVALID_RAW_UID")
