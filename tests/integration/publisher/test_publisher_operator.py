"""The publisher against a real operator (in-process, on a hand-moved clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from publisher_svc.cookie import decode_cookie
from publisher_svc.model import StorageMode
from svc_common.grpc_client import bearer, error_info
from tests.integration.publisher.conftest import (
    OTHER_SITE_ID,
    SITE_ID,
    CountingOperator,
    World,
    wait_for,
)
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc
from uid2.publisher.v1 import publisher_pb2 as pb
from uid2.publisher.v1 import publisher_pb2_grpc
from uid2.ssp.v1 import ssp_pb2
from uid2_crypto.identity import sha256_b64

HOUR = 3_600_000
DAY = 24 * HOUR
OK = operator_pb2.PrivacySettings(transparency_notice_accepted=True)


def login(
    stub: publisher_pb2_grpc.PublisherServiceStub, user: str, email: str = "", phone: str = ""
) -> pb.LoginResponse:
    dii = {"email": email} if email else {"phone": phone}
    response: pb.LoginResponse = stub.Login(
        pb.LoginRequest(user_id=user, privacy_settings=OK, **dii)
    )
    return response


def serve_ad(stub: publisher_pb2_grpc.PublisherServiceStub, **subject: Any) -> pb.ServeAdResponse:
    response: pb.ServeAdResponse = stub.ServeAd(
        pb.ServeAdRequest(placement_id="slot-1", page_domain="news.example.com", **subject)
    )
    return response


def validate(world: World, token: str, email: str) -> bool:
    with grpc.insecure_channel(world.op_address) as ch:
        stub = operator_pb2_grpc.OperatorServiceStub(ch)
        r = stub.ValidateToken(
            operator_pb2.ValidateTokenRequest(token=token, dii=operator_pb2.Dii(email=email)),
            metadata=bearer(world.keys["publisher"]),
            timeout=5,
        )
        return bool(r.valid)


def test_full_chain(world: World) -> None:
    _, stub = world.publisher(world.config("chain"))
    assert login(stub, "alice", "Alice.Smith@Example.com").status == pb.LOGIN_STATUS_SUCCESS
    first = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="alice"))
    assert first.status == pb.GET_ADVERTISING_TOKEN_STATUS_SUCCESS and not first.refreshed
    assert first.advertising_token.startswith("A4")
    assert validate(world, first.advertising_token, "alice.smith@example.com")

    ad = serve_ad(stub, user_id="alice")
    assert ad.token_sent and ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_PASSED_THROUGH
    assert world.ssp.requests[-1].advertising_token == first.advertising_token  # exactly
    assert world.ssp.requests[-1].page_domain == "news.example.com"
    assert world.ssp.auth[-1] == "Bearer ssp-key-for-publisher"

    world.clock.advance(HOUR)  # refresh_from reached
    second = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="alice"))
    assert second.refreshed and second.advertising_token != first.advertising_token
    assert validate(world, second.advertising_token, "alice.smith@example.com")
    serve_ad(stub, user_id="alice")
    assert world.ssp.requests[-1].advertising_token == second.advertising_token

    assert stub.Logout(pb.LogoutRequest(user_id="alice")).deleted
    after = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="alice"))
    assert after.status == pb.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY
    ad = serve_ad(stub, user_id="alice")
    assert not ad.token_sent and world.ssp.requests[-1].advertising_token == ""


def test_refresh_optout_ends_the_chain(world: World) -> None:
    rt, stub = world.publisher(world.config("ro"), counting=True)
    counting = rt.publisher.operator
    assert isinstance(counting, CountingOperator)
    assert login(stub, "bob", "refresh-optout@example.com").status == pb.LOGIN_STATUS_SUCCESS
    ad = serve_ad(stub, user_id="bob")
    assert ad.token_sent
    world.clock.advance(HOUR)
    r = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="bob"))
    assert r.status == pb.GET_ADVERTISING_TOKEN_STATUS_OPTOUT and r.advertising_token == ""
    ad = serve_ad(stub, user_id="bob")
    assert not ad.token_sent and world.ssp.requests[-1].advertising_token == ""
    # never call generate again for that DII, whichever user logs in with it
    generates = counting.generates
    assert login(stub, "bob", "Refresh-Optout@example.com").status == pb.LOGIN_STATUS_OPTOUT
    assert login(stub, "bob2", "refresh-optout@example.com").status == pb.LOGIN_STATUS_OPTOUT
    assert counting.generates == generates


def test_optout_at_generate_is_recorded(world: World) -> None:
    rt, stub = world.publisher(world.config("go"), counting=True)
    counting = rt.publisher.operator
    assert isinstance(counting, CountingOperator)
    assert login(stub, "c", "optout@example.com").status == pb.LOGIN_STATUS_OPTOUT
    assert login(stub, "c", phone="+00000000000").status == pb.LOGIN_STATUS_OPTOUT
    assert counting.generates == 2
    rt.served.stop(0)
    world.publishers.remove(rt)
    # the record survives a restart
    rt2, stub2 = world.publisher(world.config("go"), counting=True)
    assert login(stub2, "c", "optout@example.com").status == pb.LOGIN_STATUS_OPTOUT
    counting2 = rt2.publisher.operator
    assert isinstance(counting2, CountingOperator)
    assert counting2.generates == 0


def test_insufficient_consent(world: World) -> None:
    _, stub = world.publisher(world.config("consent"))
    r = stub.Login(pb.LoginRequest(user_id="d", email="d@example.com"))
    assert r.status == pb.LOGIN_STATUS_INSUFFICIENT_CONSENT


def test_consent_withdrawn_at_relogin_ends_the_identity(world: World) -> None:
    rt, stub = world.publisher(world.config("withdrawn", background_refresh=True))
    assert login(stub, "dee", "dee@example.com").status == pb.LOGIN_STATUS_SUCCESS
    assert serve_ad(stub, user_id="dee").token_sent
    r = stub.Login(
        pb.LoginRequest(
            user_id="dee",
            email="dee@example.com",
            privacy_settings=operator_pb2.PrivacySettings(transparency_notice_accepted=False),
        )
    )
    assert r.status == pb.LOGIN_STATUS_INSUFFICIENT_CONSENT and not r.clear_cookie
    got = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="dee"))
    assert got.status == pb.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY
    assert not serve_ad(stub, user_id="dee").token_sent
    assert world.ssp.requests[-1].advertising_token == ""
    assert rt.publisher.store.get("dee") is None  # nothing left for the refresher


def test_login_by_hash(world: World) -> None:
    rt, stub = world.publisher(world.config("hash"), counting=True)
    r = stub.Login(
        pb.LoginRequest(
            user_id="hh", email_hash=sha256_b64("hash.user@example.com"), privacy_settings=OK
        )
    )
    assert r.status == pb.LOGIN_STATUS_SUCCESS
    tok = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="hh")).advertising_token
    assert validate(world, tok, "Hash.User@example.com")  # the same UID2 as the DII's
    optout_hash = sha256_b64("optout@example.com")
    r = stub.Login(pb.LoginRequest(user_id="ho", email_hash=optout_hash, privacy_settings=OK))
    assert r.status == pb.LOGIN_STATUS_OPTOUT
    counting = rt.publisher.operator
    assert isinstance(counting, CountingOperator)
    generates = counting.generates
    # the opt-out recorded for the hash holds for the DII: generate is not called again
    assert login(stub, "ho", "OptOut@example.com").status == pb.LOGIN_STATUS_OPTOUT
    assert counting.generates == generates


def test_site_level_optout(world: World) -> None:
    rt, stub = world.publisher(world.config("site"), counting=True)
    assert login(stub, "erin", "erin@example.com").status == pb.LOGIN_STATUS_SUCCESS
    assert stub.SetUserOptOut(pb.SetUserOptOutRequest(user_id="erin", opted_out=True)).opted_out
    r = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="erin"))
    assert r.status == pb.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY
    counting = rt.publisher.operator
    assert isinstance(counting, CountingOperator)
    generates = counting.generates
    assert login(stub, "erin", "erin@example.com").status == pb.LOGIN_STATUS_SITE_OPTOUT
    assert counting.generates == generates
    assert not serve_ad(stub, user_id="erin").token_sent
    stub.SetUserOptOut(pb.SetUserOptOutRequest(user_id="erin", opted_out=False))
    assert login(stub, "erin", "erin@example.com").status == pb.LOGIN_STATUS_SUCCESS


def test_client_side_mode_round_trip(world: World) -> None:
    rt, stub = world.publisher(world.config("client", storage_mode=StorageMode.CLIENT))
    r = login(stub, "fay", "fay@example.com")
    assert r.status == pb.LOGIN_STATUS_SUCCESS and r.cookie.name == "__uid_2"
    ident = decode_cookie(r.cookie.value)
    assert r.cookie.expires == ident.refresh_expires
    assert rt.publisher.store.count() == 0  # stores nothing

    same = stub.RefreshClientIdentity(pb.RefreshClientIdentityRequest(cookie_value=r.cookie.value))
    assert same.status == pb.REFRESH_CLIENT_IDENTITY_STATUS_SUCCESS and not same.refreshed
    assert same.cookie.value == r.cookie.value

    ad = serve_ad(stub, cookie_value=r.cookie.value)
    assert ad.token_sent and world.ssp.requests[-1].advertising_token == ident.advertising_token

    world.clock.advance(HOUR)
    new = stub.RefreshClientIdentity(pb.RefreshClientIdentityRequest(cookie_value=r.cookie.value))
    assert new.refreshed and not new.clear_cookie
    new_ident = decode_cookie(new.cookie.value)
    assert new_ident.advertising_token != ident.advertising_token
    assert new.advertising_token == new_ident.advertising_token
    assert validate(world, new_ident.advertising_token, "fay@example.com")

    # refresh-optout: the cookie must be cleared, and the DII (when given) recorded
    ro = login(stub, "gus", "refresh-optout@example.com")
    world.clock.advance(HOUR)
    cleared = stub.RefreshClientIdentity(
        pb.RefreshClientIdentityRequest(
            cookie_value=ro.cookie.value, email="refresh-optout@example.com"
        )
    )
    assert cleared.status == pb.REFRESH_CLIENT_IDENTITY_STATUS_OPTOUT and cleared.clear_cookie
    ad = serve_ad(stub, cookie_value=ro.cookie.value)
    assert not ad.token_sent and ad.clear_cookie
    assert login(stub, "gus", "refresh-optout@example.com").status == pb.LOGIN_STATUS_OPTOUT
    assert rt.publisher.store.count() == 0


def test_operator_restarted_during_background_refresh(world: World) -> None:
    rt, stub = world.publisher(
        world.config("bg", background_refresh=True, refresh_workers=4, operator_timeout_s=2.0)
    )
    assert rt.refresher is not None
    n = 120
    for i in range(n):
        assert login(stub, f"u{i}", f"user{i}@example.com").status == pb.LOGIN_STATUS_SUCCESS
    before = {
        i: stub.GetAdvertisingToken(
            pb.GetAdvertisingTokenRequest(user_id=f"u{i}")
        ).advertising_token
        for i in range(n)
    }
    world.clock.advance(HOUR)  # every identity is due
    rt.refresher.wake()
    assert wait_for(lambda: rt.refresher.stats.refreshed >= 10, 10)
    world.stop_operator()  # mid-pass
    assert wait_for(lambda: rt.refresher.stats.deferred > 0, 10)
    assert rt.publisher.store.count() == n  # nothing lost
    # still-valid tokens keep being served while the operator is down
    stale = [
        i
        for i in range(n)
        if rt.publisher.store.get(f"u{i}").identity.advertising_token == before[i]  # type: ignore[union-attr]  # a None fails the test here anyway
    ]
    assert stale
    got = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id=f"u{stale[0]}"))
    assert got.status == pb.GET_ADVERTISING_TOKEN_STATUS_SUCCESS
    assert got.advertising_token == before[stale[0]] and not got.refreshed

    world.start_operator()

    def all_refreshed() -> bool:
        # The clock only moves by hand: step it past the longest backoff (60 s), which also
        # closes the circuit breaker (1 s on the same clock), then run a whole pass here and now
        # rather than waking the thread and guessing how long its pass takes.
        if all(
            rt.publisher.store.get(f"u{i}").identity.advertising_token != before[i]  # type: ignore[union-attr]  # a None fails the test here anyway
            for i in range(n)
        ):
            return True
        world.clock.advance(61_000)
        rt.refresher.run_once()  # type: ignore[union-attr]  # this config runs a refresher
        return False

    assert wait_for(all_refreshed, 20)
    assert rt.publisher.store.count() == n
    for i in range(n):
        cur = rt.publisher.store.get(f"u{i}")
        assert cur is not None and cur.identity.advertising_token != before[i]
        assert cur.identity.refresh_from > world.clock.now_ms()
    assert rt.refresher.stats.optouts == 0 and rt.refresher.stats.login_required == 0
    assert rt.refresher.stats.peak_in_flight <= 4


def test_background_refresh_optout(world: World) -> None:
    rt, stub = world.publisher(world.config("bgo", background_refresh=True))
    login(stub, "h", "refresh-optout@example.com")
    world.clock.advance(HOUR)
    rt.refresher.wake()  # type: ignore[union-attr]  # this config runs a refresher
    assert wait_for(lambda: rt.publisher.store.get("h") is None, 10)
    assert not serve_ad(stub, user_id="h").token_sent
    # the caller hears it was an opt-out (do not prompt), not "never logged in"
    got = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="h"))
    assert got.status == pb.GET_ADVERTISING_TOKEN_STATUS_OPTOUT
    assert login(stub, "h", "refresh-optout@example.com").status == pb.LOGIN_STATUS_OPTOUT


def test_delegation_mode(world: World) -> None:
    _, stub = world.publisher(
        world.config("sso", operator_api_key=world.keys["provider"], on_behalf_of_site_id=SITE_ID)
    )
    assert login(stub, "ivy", "ivy@example.com").status == pb.LOGIN_STATUS_SUCCESS
    tok = stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="ivy")).advertising_token
    # the token belongs to the publisher's site: its own GENERATOR key validates it
    assert validate(world, tok, "ivy@example.com")
    world.clock.advance(HOUR)
    assert stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="ivy")).refreshed

    _, other = world.publisher(
        world.config(
            "sso-other", operator_api_key=world.keys["provider"], on_behalf_of_site_id=OTHER_SITE_ID
        )
    )
    with pytest.raises(grpc.RpcError) as exc:
        login(other, "ivy", "ivy@example.com")
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(exc.value)
    assert info is not None and info.reason == "OPERATOR_REJECTED"
    assert dict(info.metadata) == {"peerCode": "PERMISSION_DENIED", "peerReason": "NO_DELEGATION"}


def test_operator_unreachable_is_unavailable_and_nothing_lost(world: World) -> None:
    rt, stub = world.publisher(world.config("down", operator_timeout_s=0.3))
    login(stub, "jo", "jo@example.com")
    world.stop_operator()
    with pytest.raises(grpc.RpcError) as exc:
        login(stub, "kim", "kim@example.com")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(exc.value).reason == "OPERATOR_UNAVAILABLE"  # type: ignore[union-attr]  # a None fails the test here anyway
    world.clock.advance(4 * DAY)  # token expired, refresh token still valid
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="jo"))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not serve_ad(stub, user_id="jo").token_sent  # the impression still goes out
    assert rt.publisher.store.get("jo") is not None
    world.start_operator()

    def refreshed() -> bool:  # the channel reconnects within its backoff (at most 1 s)
        try:
            r: pb.GetAdvertisingTokenResponse = stub.GetAdvertisingToken(
                pb.GetAdvertisingTokenRequest(user_id="jo")
            )
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            return False
        return r.status == pb.GET_ADVERTISING_TOKEN_STATUS_SUCCESS and r.refreshed

    assert wait_for(refreshed, 10)


def test_bad_dii_is_invalid_argument(world: World) -> None:
    _, stub = world.publisher(world.config("bad"))
    for kw, reason in (
        ({"email": "a@ba@z.com"}, "INVALID_EMAIL"),
        ({"phone": "+123"}, "INVALID_PHONE"),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Login(pb.LoginRequest(user_id="x", privacy_settings=OK, **kw))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(exc.value).reason == reason  # type: ignore[union-attr]  # a None fails the test here anyway


def test_callers_bad_input_is_its_own_invalid_argument_not_a_peer_refusal(world: World) -> None:
    _, stub = world.publisher(world.config("inputs"))
    cases: list[tuple[Callable[[], object], str]] = [
        # The operator judges the TCF string; its reason reaches the caller unchanged.
        (lambda: stub.Login(pb.LoginRequest(
            user_id="u", email="u@example.com",
            privacy_settings=operator_pb2.PrivacySettings(
                transparency_notice_accepted=True, tcf_consent_string="not-a-tcf-string")),
        ), "INVALID_TCF_CONSENT_STRING"),
        # Over the operator's DII limit: refused here, not hashed into a valid-looking hash.
        (lambda: login(stub, "u", "a" * 100_000 + "@example.com"), "INVALID_EMAIL"),
        # The SSP's limits, checked before the impression leaves.
        (lambda: stub.ServeAd(pb.ServeAdRequest(
            placement_id="p" * 100_000, page_domain="news.example.com")), "FIELD_TOO_LONG"),
        (lambda: stub.ServeAd(pb.ServeAdRequest(
            placement_id="p", page_domain="news.example.com", floor_price=float("nan"))),
         "INVALID_FLOOR_PRICE"),
        (lambda: stub.ServeAd(pb.ServeAdRequest(
            placement_id="p", page_domain="news.example.com", floor_price=float("inf"))),
         "INVALID_FLOOR_PRICE"),
        (lambda: stub.ServeAd(pb.ServeAdRequest(
            placement_id="p", page_domain="news.example.com", floor_price=1e300)),
         "INVALID_FLOOR_PRICE"),
    ]  # fmt: skip
    for call, reason in cases:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (reason, exc.value.details())
        info = error_info(exc.value)
        assert info is not None and info.reason == reason
    assert stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="u")).status == (
        pb.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY
    )


def _wrong_mode(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    info = error_info(exc.value)
    assert info is not None
    return exc.value.code(), info.reason, exc.value.details(), dict(info.metadata)


def test_calls_for_the_other_storage_mode_are_refused(world: World) -> None:
    """Before, they were answered as if they applied: on a client-mode publisher a
    GetAdvertisingToken right after a successful Login said NO_IDENTITY, ServeAd(user_id) sent
    no token, Logout answered an empty response; a server-mode one refreshed a cookie."""
    _, client = world.publisher(world.config("client", storage_mode=StorageMode.CLIENT))
    cookie = login(client, "hal", "hal@example.com").cookie.value
    for call, names in (
        (
            lambda: client.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="hal")),
            "RefreshClientIdentity",
        ),
        (lambda: serve_ad(client, user_id="hal"), "cookie_value"),
        (lambda: client.Logout(pb.LogoutRequest(user_id="hal")), "__uid_2 cookie"),
    ):
        code, reason, message, metadata = _wrong_mode(call)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_STORAGE_MODE")
        assert "runs in client-side storage mode" in message and names in message
        assert metadata == {"storageMode": "client"}
    assert not world.ssp.requests  # the impression did not go out

    _, server = world.publisher(world.config("server"))
    assert login(server, "hal", "hal@example.com").status == pb.LOGIN_STATUS_SUCCESS
    for call, names in (
        (
            lambda: server.RefreshClientIdentity(
                pb.RefreshClientIdentityRequest(cookie_value=cookie)
            ),
            "GetAdvertisingToken",
        ),
        (lambda: serve_ad(server, cookie_value=cookie), "user_id"),
    ):
        code, reason, message, metadata = _wrong_mode(call)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_STORAGE_MODE")
        assert "runs in server-side storage mode" in message and names in message
        assert metadata == {"storageMode": "server"}
    assert not world.ssp.requests

    # What applies in both modes still does: an anonymous impression, a site opt-out.
    for stub in (client, server):
        assert not serve_ad(stub).token_sent
        assert stub.SetUserOptOut(pb.SetUserOptOutRequest(user_id="hal", opted_out=True)).opted_out
