"""The servicer under grpc_testing: proto <-> domain conversion, without a network."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import grpc
import grpc_testing
import pytest
import uid2_client

from bidstream.key_json import key_container_dict, key_json_text
from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.servicer import OperatorServicer
from operator_svc.store import OperatorStore
from svc_common.clock import ManualClock, SystemClock
from uid2.operator.v1 import operator_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["OperatorService"]


class Harness:
    def __init__(self, server: Any, keys: dict[str, admin.NewClient], clock: ManualClock) -> None:
        self.server = server
        self.keys = keys
        self.clock = clock

    def unary(self, method: str, request: Any, who: str | None = "all") -> tuple[Any, Any]:
        md = () if who is None else (("authorization", "Bearer " + self.keys[who].api_key),)
        rpc = self.server.invoke_unary_unary(SERVICE.methods_by_name[method], md, request, None)
        response, _, code, _ = rpc.termination()
        return response, code

    def stream(self, method: str, request: Any, who: str = "all") -> Any:
        md = (("authorization", "Bearer " + self.keys[who].api_key),)
        return self.server.invoke_unary_stream(SERVICE.methods_by_name[method], md, request, None)


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    d = tmp_path_factory.mktemp("svc")
    store = OperatorStore.create(d)
    # Held at the real time once: the SDK checks tokens against the wall clock, while the
    # operator's own clock is fixed so the run does not depend on how long it takes.
    clock = ManualClock(SystemClock().now_ms())
    admin.initialise(store, clock.now_ms(), os.urandom)
    keys = {
        "all": admin.add_client(
            store,
            site_id=10,
            name="all",
            roles=["GENERATOR", "MAPPER", "OPTOUT", "ID_READER", "SHARER"],
            now_ms=clock.now_ms(),
            rng=os.urandom,
        ),
    }
    op = Operator(OperatorConfig(data_dir=d), store, clock=clock, rng=os.urandom)
    server = grpc_testing.server_from_dictionary(
        {SERVICE: OperatorServicer(op)}, grpc_testing.strict_real_time()
    )
    yield Harness(server, keys, clock)
    op.close()


def _gen(h: Harness, email: str) -> pb.GenerateTokenResponse:
    req = pb.GenerateTokenRequest(
        dii=pb.Dii(email=email),
        privacy_settings=pb.PrivacySettings(transparency_notice_accepted=True),
    )
    resp, code = h.unary("GenerateToken", req)
    assert code is grpc.StatusCode.OK
    return resp  # type: ignore[no-any-return]  # grpc is untyped: its calls return Any


def test_generate_refresh_validate(h: Harness) -> None:
    resp = _gen(h, "svc@example.com")
    assert resp.status == pb.GENERATE_TOKEN_STATUS_SUCCESS
    assert (
        resp.identity.refresh_from < resp.identity.identity_expires < resp.identity.refresh_expires
    )
    refreshed, code = h.unary(
        "RefreshToken", pb.RefreshTokenRequest(refresh_token=resp.identity.refresh_token), who=None
    )
    assert code is grpc.StatusCode.OK and refreshed.status == pb.REFRESH_TOKEN_STATUS_SUCCESS
    valid, _ = h.unary(
        "ValidateToken",
        pb.ValidateTokenRequest(
            token=refreshed.identity.advertising_token, dii=pb.Dii(email="svc@example.com")
        ),
    )
    assert valid.valid
    bad, _ = h.unary("RefreshToken", pb.RefreshTokenRequest(refresh_token="nope"), who=None)
    assert bad.status == pb.REFRESH_TOKEN_STATUS_INVALID_TOKEN and not bad.HasField("identity")


def test_optout_statuses(h: Harness) -> None:
    assert _gen(h, "optout@example.com").status == pb.GENERATE_TOKEN_STATUS_OPTOUT
    resp = _gen(h, "gone@example.com")
    out, _ = h.unary("OptOut", pb.OptOutRequest(dii=pb.Dii(email="gone@example.com")))
    assert out.opted_out_at > 0
    refreshed, _ = h.unary(
        "RefreshToken", pb.RefreshTokenRequest(refresh_token=resp.identity.refresh_token), who=None
    )
    assert refreshed.status == pb.REFRESH_TOKEN_STATUS_OPTOUT
    mapped, _ = h.unary(
        "MapIdentity",
        pb.MapIdentityRequest(
            dii=[
                pb.Dii(email="gone@example.com"),
                pb.Dii(phone="x"),
                pb.Dii(email="ok@example.com"),
            ]
        ),
    )
    reasons = [r.unmapped_reason for r in mapped.results]
    assert reasons == [
        pb.UNMAPPED_REASON_OPTOUT,
        pb.UNMAPPED_REASON_INVALID_IDENTIFIER,
        pb.UNMAPPED_REASON_UNSPECIFIED,
    ]
    assert mapped.results[2].raw_uid and mapped.results[2].bucket_id


def test_watch_backlog(h: Harness) -> None:
    h.unary("OptOut", pb.OptOutRequest(dii=pb.Dii(email="w1@example.com")))
    mapped, _ = h.unary("MapIdentity", pb.MapIdentityRequest(dii=[pb.Dii(email="w2@example.com")]))
    raw = mapped.results[0].raw_uid
    # A millisecond later than every earlier opt-out, so a watch from its time starts with it.
    h.clock.advance(1)
    out, _ = h.unary("OptOut", pb.OptOutRequest(dii=pb.Dii(email="w2@example.com")))
    status, _ = h.unary("GetOptOutStatus", pb.GetOptOutStatusRequest(raw_uids=[raw]))
    assert [(o.raw_uid, o.opted_out_at) for o in status.opted_out] == [(raw, out.opted_out_at)]
    rpc = h.stream("WatchOptOuts", pb.WatchOptOutsRequest(since=out.opted_out_at))
    first = rpc.take_response()
    assert first.raw_uid == raw
    rpc.cancel()


def test_key_containers_render_for_the_sdk(h: Harness) -> None:
    resp, _ = h.unary("GetBidstreamKeys", pb.GetBidstreamKeysRequest())
    body = key_container_dict(resp.key_container)
    assert isinstance(body["keys"][0]["id"], int) and isinstance(body["token_expiry_seconds"], int)
    master = [k for k in body["keys"] if k.get("keyset_id") == 9999999]
    assert master and all("site_id" not in k for k in master)
    client = uid2_client.BidstreamClient(
        "http://unused", h.keys["all"].api_key, h.keys["all"].secret
    )
    client._refresh_json(key_json_text(resp.key_container))
    tok = _gen(h, "sdk@example.com").identity.advertising_token
    res = client.decrypt_token_into_raw_uid(tok, "example.com")
    assert res.success and res.site_id == 10
    sharing, _ = h.unary("GetSharingKeys", pb.GetSharingKeysRequest())
    sc = uid2_client.SharingClient("http://unused", h.keys["all"].api_key, h.keys["all"].secret)
    sc._refresh_json(json.dumps({"body": key_container_dict(sharing.key_container)}))
    assert sc.decrypt_token_into_raw_uid(tok).success
