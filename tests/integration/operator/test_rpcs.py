"""Every RPC x role on a real in-process server (port 0), plus the flows of the issue."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
import uid2_client

from bidstream.key_json import key_json_text
from operator_svc import cli
from svc_common.grpc_client import error_info
from tests.integration.operator.conftest import OK_PRIVACY, ROLES, Live, add_client
from uid2.operator.v1 import operator_pb2 as pb

EMAIL = pb.Dii(email="matrix@example.com")
RAW = "A" * 43 + "="

CALLS: dict[str, tuple[Any, set[str]]] = {
    "GenerateToken": (
        pb.GenerateTokenRequest(dii=EMAIL, privacy_settings=OK_PRIVACY),
        {"GENERATOR"},
    ),
    "ValidateToken": (pb.ValidateTokenRequest(token="AAAA", dii=EMAIL), {"GENERATOR"}),
    "MapIdentity": (pb.MapIdentityRequest(dii=[EMAIL]), {"MAPPER"}),
    "OptOut": (pb.OptOutRequest(dii=pb.Dii(email="matrix-out@example.com")), {"OPTOUT"}),
    "GetOptOutStatus": (
        pb.GetOptOutStatusRequest(raw_uids=[RAW]),
        {"MAPPER", "SHARER", "OPTOUT", "ID_READER"},
    ),
    "GetBidstreamKeys": (pb.GetBidstreamKeysRequest(), {"ID_READER"}),
    "GetSharingKeys": (pb.GetSharingKeysRequest(), {"SHARER", "ID_READER"}),
    "WatchOptOuts": (pb.WatchOptOutsRequest(since=2**62), {"ID_READER"}),
}


def _code(live: Live, method: str, request: Any, metadata: Any) -> tuple[grpc.StatusCode, str]:
    call = getattr(live.stub, method)
    try:
        if method == "WatchOptOuts":
            for _ in call(request, metadata=metadata, timeout=0.3):
                pass
        else:
            call(request, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        info = error_info(err)
        return err.code(), info.reason if info else ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(live: Live, method: str, role: str) -> None:
    request, allowed = CALLS[method]
    code, reason = _code(live, method, request, live.md(role))
    if role in allowed or role == "ADMIN":
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED), (code, reason)
    else:
        assert code is grpc.StatusCode.PERMISSION_DENIED and reason == "MISSING_ROLE"


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(
    ("metadata", "want"),
    [
        ((), "MISSING_API_KEY"),
        ((("authorization", "Bearer UID2-C-0000-nope"),), "INVALID_API_KEY"),
        ((("authorization", "Basic x"),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", "UID2-C-0000-nope"),), "MALFORMED_AUTHORIZATION"),  # no scheme
    ],
)
def test_unauthenticated(live: Live, method: str, metadata: Any, want: str) -> None:
    code, reason = _code(live, method, CALLS[method][0], metadata)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, want)


@pytest.mark.parametrize("valid_first", [True, False])
def test_two_authorization_entries_are_refused_whichever_comes_first(
    live: Live, valid_first: bool
) -> None:
    good = ("authorization", "Bearer " + live.clients["GENERATOR"].api_key)
    bad = ("authorization", "Bearer UID2-C-0000-nope")
    metadata = (good, bad) if valid_first else (bad, good)
    code, reason = _code(live, "GenerateToken", CALLS["GenerateToken"][0], metadata)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "AMBIGUOUS_API_KEY")
    # The same one twice (a proxy repeating the header) is one credential.
    for again in (good, (good[0], good[1].replace(" ", "  ") + " ")):  # the same key
        code, _ = _code(live, "GenerateToken", CALLS["GenerateToken"][0], (good, again))
        assert code is grpc.StatusCode.OK


def test_disabled_client_is_unauthenticated(live: Live) -> None:
    c = add_client(live.dir, 400, "soon-disabled", ["GENERATOR"])
    assert _wait_code(live, "GenerateToken", c.api_key, grpc.StatusCode.OK)
    assert (
        cli.main(["client", "disable", "--data-dir", str(live.dir), "--name", "soon-disabled"]) == 0
    )
    assert _wait_code(live, "GenerateToken", c.api_key, grpc.StatusCode.UNAUTHENTICATED)


def _wait_code(
    live: Live, method: str, api_key: str, want: grpc.StatusCode, timeout_s: float = 1.0
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        code, _ = _code(live, method, CALLS[method][0], (("authorization", "Bearer " + api_key),))
        if code is want:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_refresh_needs_no_key_and_chains(live: Live) -> None:
    ident = live.generate("pub", "chain@example.com").identity
    seen = {ident.refresh_response_key}
    for _ in range(3):
        resp = live.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=ident.refresh_token))
        assert resp.status == pb.REFRESH_TOKEN_STATUS_SUCCESS
        ident = resp.identity
        seen.add(ident.refresh_response_key)
    assert len(seen) == 4


def test_optout_then_refresh(live: Live) -> None:
    ident = live.generate("pub", "bye@example.com").identity
    live.stub.OptOut(pb.OptOutRequest(dii=pb.Dii(email="bye@example.com")), metadata=live.md("pub"))
    resp = live.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=ident.refresh_token))
    assert resp.status == pb.REFRESH_TOKEN_STATUS_OPTOUT and not resp.HasField("identity")
    assert live.generate("pub", "bye@example.com").status == pb.GENERATE_TOKEN_STATUS_OPTOUT


@pytest.mark.parametrize(
    "dii, generate, refresh",
    [
        (pb.Dii(email="validate@example.com"), "SUCCESS", "SUCCESS"),
        (pb.Dii(phone="+12345678901"), "SUCCESS", "SUCCESS"),
        (pb.Dii(email="optout@example.com"), "OPTOUT", None),
        (pb.Dii(phone="+00000000000"), "OPTOUT", None),
        (pb.Dii(email="refresh-optout@example.com"), "SUCCESS", "OPTOUT"),
        (pb.Dii(phone="+00000000002"), "SUCCESS", "OPTOUT"),
    ],
)
def test_test_identities(live: Live, dii: pb.Dii, generate: str, refresh: str | None) -> None:
    resp = live.stub.GenerateToken(
        pb.GenerateTokenRequest(dii=dii, privacy_settings=OK_PRIVACY), metadata=live.md("pub")
    )
    assert pb.GenerateTokenStatus.Name(resp.status) == "GENERATE_TOKEN_STATUS_" + generate
    if refresh:
        r = live.stub.RefreshToken(
            pb.RefreshTokenRequest(refresh_token=resp.identity.refresh_token)
        )
        assert pb.RefreshTokenStatus.Name(r.status) == "REFRESH_TOKEN_STATUS_" + refresh


def test_consent(live: Live) -> None:
    resp = live.stub.GenerateToken(
        pb.GenerateTokenRequest(dii=EMAIL, privacy_settings=pb.PrivacySettings()),
        metadata=live.md("pub"),
    )
    assert resp.status == pb.GENERATE_TOKEN_STATUS_INSUFFICIENT_CONSENT
    with pytest.raises(grpc.RpcError) as exc:
        live.stub.GenerateToken(
            pb.GenerateTokenRequest(
                dii=EMAIL,
                privacy_settings=pb.PrivacySettings(
                    transparency_notice_accepted=True, tcf_consent_string="%%"
                ),
            ),
            metadata=live.md("pub"),
        )
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(exc.value)
    assert info is not None
    assert info.reason == "INVALID_TCF_CONSENT_STRING"


def test_delegation_granted_missing_revoked(live: Live) -> None:
    sso = add_client(live.dir, 500, "sso-idp", ["GENERATOR"])
    d = str(live.dir)
    assert (
        cli.main(
            [
                "site",
                "add",
                "--data-dir",
                d,
                "--site-id",
                "501",
                "--name",
                "pub501",
                "--domain",
                "pub501.example",
            ]
        )
        == 0
    )
    req = pb.GenerateTokenRequest(dii=EMAIL, privacy_settings=OK_PRIVACY, on_behalf_of_site_id=501)

    def code() -> grpc.StatusCode:
        try:
            live.stub.GenerateToken(req, metadata=(("authorization", "Bearer " + sso.api_key),))
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    assert _until(lambda: code() is grpc.StatusCode.PERMISSION_DENIED)
    assert (
        cli.main(
            ["delegation", "grant", "--data-dir", d, "--site-id", "501", "--client-name", "sso-idp"]
        )
        == 0
    )
    assert _until(lambda: code() is grpc.StatusCode.OK)
    resp = live.stub.GenerateToken(req, metadata=(("authorization", "Bearer " + sso.api_key),))
    keys = live.stub.GetBidstreamKeys(pb.GetBidstreamKeysRequest(), metadata=live.md("reader"))
    sdk = uid2_client.BidstreamClient("http://unused", "k", "c2VjcmV0")
    sdk._refresh_json(key_json_text(keys.key_container))
    res = sdk.decrypt_token_into_raw_uid(resp.identity.advertising_token, "pub501.example")
    assert res.success and res.site_id == 501
    assert (
        cli.main(
            [
                "delegation",
                "revoke",
                "--data-dir",
                d,
                "--site-id",
                "501",
                "--client-name",
                "sso-idp",
            ]
        )
        == 0
    )
    assert _until(lambda: code() is grpc.StatusCode.PERMISSION_DENIED)


def _until(pred: Any, timeout_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sizes(live: Live) -> None:
    many = pb.MapIdentityRequest(dii=[EMAIL] * 5001)
    with pytest.raises(grpc.RpcError) as exc:
        live.stub.MapIdentity(many, metadata=live.md("pub"))
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(exc.value)
    assert info is not None
    assert info.reason == "TOO_MANY_ITEMS"
    ok = live.stub.MapIdentity(pb.MapIdentityRequest(dii=[EMAIL] * 5000), metadata=live.md("pub"))
    assert len(ok.results) == 5000
    with pytest.raises(grpc.RpcError) as exc:
        live.stub.GetOptOutStatus(
            pb.GetOptOutStatusRequest(raw_uids=[RAW] * 5001), metadata=live.md("pub")
        )
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    huge = pb.MapIdentityRequest(dii=[pb.Dii(email="x" * 1000)] * 5000)
    with pytest.raises(grpc.RpcError) as exc:
        live.stub.MapIdentity(huge, metadata=live.md("pub"))
    assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(exc.value)
    assert info is not None
    assert info.reason == "REQUEST_TOO_LARGE"


@pytest.mark.parametrize("reader", ["reader", "ADMIN"])
def test_watch_live_and_resume(live: Live, reader: str) -> None:
    got: list[pb.WatchOptOutsResponse] = []
    start = int(time.time() * 1000)
    stream = live.stub.WatchOptOuts(pb.WatchOptOutsRequest(since=start), metadata=live.md(reader))

    def consume() -> None:
        try:
            for item in stream:
                got.append(item)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    # Past a check of the key (optout.WATCH_POLL_S): an ADMIN's stream was ended there as if
    # its key had lost ID_READER (diff review), though ADMIN holds every role.
    time.sleep(0.8)
    out = live.stub.OptOut(
        pb.OptOutRequest(dii=pb.Dii(email=f"stream-{reader}@example.com")), metadata=live.md("pub")
    )
    assert _until(lambda: any(g.opted_out_at == out.opted_out_at for g in got), 1.0)
    stream.cancel()
    t.join(2)
    # Nothing on record from `start`: the end-of-backlog mark first, then the live opt-out.
    assert [(g.backlog_sent, g.raw_uid == "") for g in got[:1]] == [(True, True)]
    assert not got[-1].backlog_sent and got[-1].raw_uid
    # Resume from the last time seen: the backlog includes it, then comes the mark.
    again = live.stub.WatchOptOuts(
        pb.WatchOptOutsRequest(since=out.opted_out_at), metadata=live.md(reader), timeout=0.5
    )
    seen = []
    with pytest.raises(grpc.RpcError):
        for item in again:
            seen.append("<mark>" if item.backlog_sent else item.raw_uid)
    assert seen[-2:] == [got[-1].raw_uid, "<mark>"]
    status = live.stub.GetOptOutStatus(
        pb.GetOptOutStatusRequest(raw_uids=[got[-1].raw_uid, RAW]), metadata=live.md("reader")
    )
    assert [o.raw_uid for o in status.opted_out] == [got[-1].raw_uid]


def test_validate_own_site_only(live: Live) -> None:
    tok = live.generate("pub", "val@example.com").identity.advertising_token
    dii = pb.Dii(email="val@example.com")
    assert live.stub.ValidateToken(
        pb.ValidateTokenRequest(token=tok, dii=dii), metadata=live.md("pub")
    ).valid
    assert not live.stub.ValidateToken(
        pb.ValidateTokenRequest(token=tok, dii=dii), metadata=live.md("GENERATOR")
    ).valid


def test_health_serving(live: Live) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    resp = health_pb2_grpc.HealthStub(live.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
