"""Key rotation under a live SDK decryptor, and malformed input never yielding UNKNOWN/INTERNAL."""

from __future__ import annotations

import os
import threading
import time

import grpc
import uid2_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidstream.key_json import key_json_text
from operator_svc import admin
from operator_svc.store import OperatorStore
from svc_common.clock import SystemClock
from tests.integration.operator.conftest import Live
from uid2.operator.v1 import operator_pb2 as pb

BAD = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def test_key_rotation_while_sdk_decrypts(live: Live) -> None:
    """Keys rotate (activating 2 s later) while tokens keep flowing to an SDK decryptor that
    refreshes its keys every 200 ms: no token fails to decrypt. (The activation delay is what
    protects decryptors; 2 s leaves room for a loaded CI box to starve the refresher a while.)"""
    sdk = uid2_client.BidstreamClient("http://unused", "k", "c2VjcmV0")
    lock = threading.Lock()
    stop = threading.Event()

    def refresher() -> None:
        while not stop.is_set():
            keys = live.stub.GetBidstreamKeys(
                pb.GetBidstreamKeysRequest(), metadata=live.md("reader")
            )
            with lock:
                sdk._refresh_json(key_json_text(keys.key_container))
            stop.wait(0.2)

    keys = live.stub.GetBidstreamKeys(pb.GetBidstreamKeysRequest(), metadata=live.md("reader"))
    sdk._refresh_json(key_json_text(keys.key_container))
    before = {k.id for k in keys.key_container.keys}
    t = threading.Thread(target=refresher, daemon=True)
    t.start()
    store = OperatorStore.open(live.dir)
    report = admin.rotate_keys(
        store, now_ms=SystemClock().now_ms(), rng=os.urandom, activation_delay_s=2
    )
    store.close()
    failures = 0
    decrypted = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        tok = live.generate("pub", "rotate@example.com").identity.advertising_token
        with lock:
            res = sdk.decrypt_token_into_raw_uid(tok, "example.com")
        decrypted += 1
        failures += not res.success
        time.sleep(0.02)
    stop.set()
    t.join(2)
    assert failures == 0 and decrypted > 20
    after = live.stub.GetBidstreamKeys(pb.GetBidstreamKeysRequest(), metadata=live.md("reader"))
    assert report.created >= 3 and before < {k.id for k in after.key_container.keys}
    # Tokens minted now use the new keys.
    tok = live.generate("pub", "rotate@example.com").identity.advertising_token
    sdk._refresh_json(key_json_text(after.key_container))
    assert sdk.decrypt_token_into_raw_uid(tok, "example.com").success


dii = st.one_of(
    st.builds(pb.Dii, email=st.text(max_size=60)),
    st.builds(pb.Dii, email_hash=st.text(max_size=70)),
    st.builds(pb.Dii, phone=st.text(max_size=20)),
    st.builds(pb.Dii, phone_hash=st.text(max_size=70)),
    st.just(pb.Dii()),
)


def _call(fn: object, request: object, metadata: object) -> grpc.StatusCode:
    try:
        fn(request, metadata=metadata, timeout=10)  # type: ignore[operator]  # a callable passed as object
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    d=dii,
    tcf=st.text(max_size=40),
    site=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    token=st.text(max_size=400),
    raws=st.lists(st.text(max_size=50), max_size=5),
    since=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    key=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60),
)
def test_malformed_requests_never_unknown(
    live: Live, d: pb.Dii, tcf: str, site: int, token: str, raws: list[str], since: int, key: str
) -> None:
    s = live.stub
    m = live.md("ADMIN")
    gen = pb.GenerateTokenRequest(
        dii=d,
        privacy_settings=pb.PrivacySettings(
            transparency_notice_accepted=True, tcf_consent_string=tcf
        ),
        on_behalf_of_site_id=site,
    )
    codes = [
        _call(s.GenerateToken, gen, m),
        _call(s.RefreshToken, pb.RefreshTokenRequest(refresh_token=token), ()),
        _call(s.ValidateToken, pb.ValidateTokenRequest(token=token, dii=d), m),
        _call(s.MapIdentity, pb.MapIdentityRequest(dii=[d, d]), m),
        _call(s.GetOptOutStatus, pb.GetOptOutStatusRequest(raw_uids=raws), m),
        _call(s.GenerateToken, gen, (("authorization", "Bearer " + key),)),
    ]
    try:
        for _ in s.WatchOptOuts(pb.WatchOptOutsRequest(since=since), metadata=m, timeout=0.05):
            break
    except grpc.RpcError as err:
        codes.append(err.code())
    assert not any(c in BAD for c in codes), codes
