"""Behaviour that needs time or salts to move: expired refresh tokens, salt-bucket rotation
(/v2/identity/buckets, previous raw UID2 in identity map v3), and the front door's stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from uid2_client import IdentityMapClient, IdentityMapV3Client, IdentityMapV3Input

from operator_svc import admin
from operator_svc.http import app as http_app
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


def test_a_buckets_answer_counts_against_the_memory_budget_while_it_is_sent(
    timed: tuple[HttpLive, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: an answer with every rotated bucket runs to 100 MB from a 50-byte request, and
    was counted nowhere: eight at once took an operator to 2.8 GB. It now holds its size of the
    budget while it is sent (503 past it), and is built one at a time, off the event loop."""
    live, clock = timed
    store = OperatorStore.open(live.served.operator.config.data_dir)  # type: ignore[union-attr]  # the gRPC operator is served here
    try:
        admin.rotate_salts(store, 0.01, clock.now_ms(), os.urandom)  # ~10,000 buckets
    finally:
        store.close()
    live.served.operator.sync_now()  # type: ignore[union-attr]  # the gRPC operator is served here
    since = {"since_timestamp": "2000-01-01T00:00:00"}
    status, answer = live.call("all", "/v2/identity/buckets", since)
    assert status == 200 and len(answer["body"]) >= 10_000
    monkeypatch.setattr(http_app, "BODY_BUDGET_BYTES", 200_000)  # below one such answer
    status, _ = live.call("all", "/v2/identity/buckets", since)
    assert status == 503
    status, answer = live.call("all", "/v2/token/generate", {"email": "small@example.com"})
    assert (status, answer["status"]) == (200, "success")  # a small answer is never refused


def test_buckets_answers_are_built_one_at_a_time(
    timed: tuple[HttpLive, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, _ = timed
    mapper = live.served.operator.mapper  # type: ignore[union-attr]  # the gRPC operator is served here
    real = mapper.buckets_since
    lock = threading.Lock()
    running, most = 0, 0

    on_loop: list[bool] = []

    def slow(*args: Any) -> Any:
        nonlocal running, most
        try:  # built in the worker pool, never on the event loop (mutation review)
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            pass
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.3)
        with lock:
            running -= 1
        return real(*args)

    monkeypatch.setattr(mapper, "buckets_since", slow)
    since = {"since_timestamp": "2100-01-01T00:00:00"}
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(live.call, "all", "/v2/identity/buckets", since) for _ in range(3)]
        assert [c.result(timeout=30)[0] for c in calls] == [200, 200, 200]
    assert most == 1 and on_loop == []


def test_stop_closes_http(tmp_path_factory: pytest.TempPathFactory) -> None:
    live = start(tmp_path_factory.mktemp("stop"))
    assert live.raw("/ops/healthcheck", method="GET").status == 200
    live.channel.close()
    live.served.stop(1.0)
    with pytest.raises(OSError):
        live.raw("/ops/healthcheck", method="GET")
