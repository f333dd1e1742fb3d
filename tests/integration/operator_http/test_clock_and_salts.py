"""Behaviour that needs time or salts to move: expired refresh tokens, salt-bucket rotation
(/v2/identity/buckets, previous raw UID2 in identity map v3), and the front door's stop."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator

import pytest
from uid2_client import IdentityMapClient, IdentityMapV3Client, IdentityMapV3Input

from operator_svc import admin
from operator_svc.store import OperatorStore
from svc_common.clock import ManualClock
from tests.integration.operator_http.conftest import HttpLive, start
from uid2.operator.v1 import operator_pb2 as pb

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpLive, ManualClock]]:
    lv = start(tmp_path_factory.mktemp("timed"), manual_clock=True)
    assert lv.clock is not None
    yield lv, lv.clock
    lv.channel.close()
    lv.served.stop(1.0)


def test_expired_refresh_token(timed: tuple[HttpLive, ManualClock]) -> None:
    live, clock = timed
    identity = live.generate("expiring@example.com")
    start_ms = clock.now_ms()
    try:
        clock.advance(31 * DAY_MS)
        reply = live.raw("/v2/token/refresh", identity.refresh_token.encode())
        assert reply.status == 400
        assert reply.json()["status"] == "expired_token"
        assert "generate" in reply.json()["message"]
        # Envelopes are judged by the operator's clock too: a caller 31 days behind is stale.
        status, answer = live.call("all", "/v2/token/generate", {"email": "a@b.com"})
        assert (status, answer["status"]) == (400, "client_error")
    finally:
        clock.set(start_ms)


def test_buckets_since_and_previous_raw_uid(timed: tuple[HttpLive, ManualClock]) -> None:
    live, clock = timed
    c = live.clients["all"]
    client = IdentityMapClient(live.base_url, c.api_key, c.secret)
    before = dt.datetime.now(tz=dt.UTC) - dt.timedelta(seconds=5)
    assert client.get_identity_buckets(before).buckets == []

    emails = [f"rotating{i}@example.com" for i in range(3000)]
    old = live.stub.MapIdentity(
        pb.MapIdentityRequest(dii=[pb.Dii(email=e) for e in emails]),
        metadata=live.grpc_md("all"),
        timeout=10,
    ).results
    store = OperatorStore.open(live.served.operator.config.data_dir)  # type: ignore[union-attr]  # the gRPC operator is served here
    try:
        rotated = admin.rotate_salts(store, 0.01, clock.now_ms(), os.urandom)
    finally:
        store.close()
    live.served.operator.sync_now()  # type: ignore[union-attr]  # the gRPC operator is served here

    buckets = client.get_identity_buckets(before).buckets
    assert len(buckets) == rotated
    ids = {b.get_bucket_id() for b in buckets}
    assert all(b.get_last_updated().startswith(str(before.year)) for b in buckets[:5])
    later = dt.datetime.now(tz=dt.UTC) + dt.timedelta(hours=1)
    assert client.get_identity_buckets(later).buckets == []

    moved = [(e, r) for e, r in zip(emails, old, strict=True) if r.bucket_id in ids]
    assert moved, "no sample email fell in a rotated bucket"
    email, previous = moved[0]
    v3 = IdentityMapV3Client(live.base_url, c.api_key, c.secret).generate_identity_map(
        IdentityMapV3Input.from_emails([email, emails[0]] if email != emails[0] else [email])
    )
    mapped = v3.mapped_identities[email]
    assert mapped.previous_raw_uid == previous.raw_uid
    assert mapped.current_raw_uid != previous.raw_uid


def test_stop_closes_http(tmp_path_factory: pytest.TempPathFactory) -> None:
    live = start(tmp_path_factory.mktemp("stop"))
    assert live.raw("/ops/healthcheck", method="GET").status == 200
    live.channel.close()
    live.served.stop(1.0)
    with pytest.raises(OSError):
        live.raw("/ops/healthcheck", method="GET")
