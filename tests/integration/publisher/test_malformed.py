"""Whatever a caller sends the publisher — odd user ids, broken emails and phones, garbage
cookies, missing fields — the answer is a status or a clear error, never UNKNOWN / INTERNAL."""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from publisher_svc.model import StorageMode
from tests.integration.publisher.conftest import World
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2 as pb

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
text = st.text(max_size=80)

requests = st.one_of(
    st.builds(
        lambda u, e, p, ok, tcf: (
            "Login",
            pb.LoginRequest(
                user_id=u,
                **({"email": e} if p is None else {"phone": p}),
                privacy_settings=operator_pb2.PrivacySettings(
                    transparency_notice_accepted=ok, tcf_consent_string=tcf
                ),
            ),
        ),
        text, text, st.none() | text, st.booleans(), st.sampled_from(["", "garbage", "CP"]),
    ),
    st.builds(lambda u: ("GetAdvertisingToken", pb.GetAdvertisingTokenRequest(user_id=u)), text),
    st.builds(lambda u: ("Logout", pb.LogoutRequest(user_id=u)), text),
    st.builds(
        lambda c, e: ("RefreshClientIdentity", pb.RefreshClientIdentityRequest(
            cookie_value=c, email=e)),
        text, text,
    ),
    st.builds(
        lambda u, c, d, f, b: ("ServeAd", pb.ServeAdRequest(
            **({"user_id": u} if c is None else {"cookie_value": c}),
            placement_id="p", page_domain=d, floor_price=f, app_bundle=b)),
        text, st.none() | text, text,
        st.floats(allow_nan=True, allow_infinity=True), text,
    ),
    st.builds(lambda u, o: ("SetUserOptOut", pb.SetUserOptOutRequest(user_id=u, opted_out=o)),
              text, st.booleans()),
)  # fmt: skip


def test_malformed_requests_never_unknown_or_internal(world: World) -> None:
    stubs = [
        world.publisher(world.config("fz-server"))[1],
        world.publisher(world.config("fz-client", storage_mode=StorageMode.CLIENT))[1],
    ]

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(requests, st.integers(0, 1))
    def check(item: tuple[str, Any], which: int) -> None:
        method, request = item
        try:
            getattr(stubs[which], method)(request, timeout=10)
        except grpc.RpcError as err:
            assert err.code() not in NEVER, (method, err.code(), err.details())

    check()
