"""Whatever a publisher sends the SSP — garbage or oversized tokens, odd domains and apps,
NaN or negative floors, bad keys — the answer is an auction outcome or a clear error, never
UNKNOWN / INTERNAL; and random text is never vouched for as a valid token.

(An edited real token may still be valid: the first byte, identity scope and type, is outside
the encryption in the UID2 format, as the official SDK reads it too, and the last base64 digit
carries unused bits.)"""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.ssp.conftest import Stack
from tests.unit.ssp.support import DOMAIN, mint
from uid2.ssp.v1 import ssp_pb2

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def test_malformed_impressions_never_unknown_or_internal(fast_stack: Stack) -> None:
    good = mint(fast_stack.keys)
    tokens = st.one_of(
        st.tuples(st.text(max_size=600), st.just(True)),
        st.tuples(st.just(good), st.just(False)),
        st.tuples(st.builds(lambda n: good[:n], st.integers(0, len(good))), st.just(False)),
        st.tuples(
            st.builds(lambda i: good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1 :],
                      st.integers(0, len(good) - 1)),
            st.just(False),
        ),
    )  # fmt: skip

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        tokens,
        st.one_of(st.just(DOMAIN), st.text(max_size=40)),
        st.one_of(st.none(), st.text(max_size=40)),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([fast_stack.pub_key, "", "not-a-key"]),
    )
    def check(item: tuple[str, bool], domain: str, app: str | None, floor: float, key: str) -> None:
        token, random_text = item
        inventory = {"page_domain": domain} if app is None else {"app_bundle": app}
        request = ssp_pb2.SubmitImpressionRequest(
            placement_id="slot", floor_price=floor, advertising_token=token, **inventory
        )
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        try:
            resp = fast_stack.stub.SubmitImpression(request, metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            assert err.code() not in NEVER, (err.code(), err.details())
            return
        if random_text and token:
            assert resp.token_disposition != ssp_pb2.TOKEN_DISPOSITION_VALID

    check()
