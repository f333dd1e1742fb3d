"""SSP + two sample bidders (one slow) + a fake operator peer (real keys and tokens), all as
real gRPC servers on free ports in this process."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bidstream.decryptor import runtime
from ssp_svc.server import STREAM_RELAY_CAPACITY
from tests.integration.ssp.conftest import Reader, Stack, build_stack, teardown
from tests.support.procs import wait_until
from tests.unit.ssp.support import mint, now_s, raw_uid_b64
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc

VALID = ssp_pb2.TOKEN_DISPOSITION_VALID


def test_token_travels_unchanged_and_slow_bidder_is_left_out(stack: Stack) -> None:
    stream = stack.reader()
    token = mint(stack.keys, uid=5)
    t0 = time.perf_counter()
    r = stack.submit(token)
    elapsed = time.perf_counter() - t0
    assert r.token_disposition == VALID
    assert r.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
    assert r.winning_bid.bidder == "alpha" and r.winning_bid.price == 2.5  # identified bonus
    assert r.bids_received == 1  # the slow bidder (600 ms > tmax 150 ms) is left out
    assert elapsed < 0.5
    captured = stream.get()
    br = captured.bid_request
    assert br.id == r.auction_id and br.tmax == 150 and br.at == 1
    assert [(e.source, [(u.id, u.atype) for u in e.uids]) for e in br.user.eids] == [
        ("uidapi.com", [(token, 3)])
    ]
    assert raw_uid_b64(5).encode() not in captured.SerializeToString()
    stream.cancel()


def test_expired_token_is_dropped_from_eids(stack: Stack) -> None:
    stream = stack.reader()
    expired = mint(stack.keys, expires_in_s=10, created_ago_s=60)
    r = stack.submit(expired)
    assert r.token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_EXPIRED
    assert r.winning_bid.price == 1.0  # anonymous price
    assert not stream.get().bid_request.user.eids
    stream.cancel()


def test_invalid_token_is_dropped(stack: Stack) -> None:
    r = stack.submit("A4" + "Q" * 216)
    assert r.token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_INVALID


def test_opt_out_applies_within_one_second(stack: Stack) -> None:
    token = mint(stack.keys, uid=9)
    assert stack.submit(token).token_disposition == VALID
    stack.fake.opt_out(raw_uid_b64(9), now_s() * 1000)
    t0 = time.monotonic()
    assert wait_until(
        lambda: stack.submit(token).token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_OPTOUT,
        1.0,
        0.01,
    )
    assert time.monotonic() - t0 < 1.0


@pytest.fixture
def patient_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The stack, with impressions waiting up to 2 s for a key fetch they asked for: on a
    loaded test box the fetch took longer than the production 0.1 s (one failure per worker,
    [5, 5, 5]). The test is about whether the fetch is asked for and used, not its speed."""
    monkeypatch.setattr(runtime, "EARLY_KEY_WAIT_S", 2.0)
    s = build_stack(tmp_path, with_slow=True)
    yield s
    teardown(s)


def test_key_rotation_during_traffic_gives_zero_decrypt_failures(patient_stack: Stack) -> None:
    stack = patient_stack
    failures: list[int] = []
    done = threading.Event()
    current = {"key": stack.keys.site}

    def traffic() -> None:
        while not done.is_set():
            r = stack.submit(mint(stack.keys, site_key=current["key"]))
            if r.token_disposition != VALID:
                failures.append(r.token_disposition)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for key_id in (301, 302, 303):
            time.sleep(0.3)
            current["key"] = stack.keys.rotate_site_key(key_id)
        time.sleep(0.3)
    finally:
        done.set()
        for w in workers:
            w.join()
    assert failures == []
    assert stack.fake.key_fetches >= 4  # start + one early refresh per rotation


def test_auctions_go_on_with_the_operator_stopped(stack: Stack) -> None:
    token = mint(stack.keys)
    assert stack.submit(token).token_disposition == VALID
    stack.operator.stop(0)
    for _ in range(5):
        r = stack.submit(token)
        assert r.token_disposition == VALID  # last good keys
        assert r.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
    # A token naming an unknown key cannot be checked now: dropped, auction still runs.
    new_key = stack.keys.rotate_site_key(999)
    r = stack.submit(mint(stack.keys, site_key=new_key))
    assert r.token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_INVALID
    assert r.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED


def test_a_subscriber_that_never_reads_does_not_slow_auctions(fast_stack: Stack) -> None:
    stack = fast_stack

    def timings(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            stack.submit(mint(stack.keys))
            out.append(time.perf_counter() - t0)
        return out

    baseline = statistics.median(timings(30))
    stuck = stack.stream()  # opened, never read: its buffer fills, then it loses requests
    reader = stack.reader()
    with_stuck = timings(300)
    assert statistics.median(with_stuck) < max(3 * baseline, baseline + 0.01)
    got = [reader.get() for _ in range(300)]
    assert all(g is not None for g in got)  # a reading subscriber misses nothing
    stuck.cancel()
    reader.cancel()


def test_a_stalled_subscriber_is_told_exactly_how_many_it_lost(fast_stack: Stack) -> None:
    stack = fast_stack
    # A receive window that stays small (no BDP growth), so the transport absorbs little.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.ssp.port}", options=options)
    stalled = GatedReader(
        ssp_pb2_grpc.SspServiceStub(channel).StreamBidRequests(
            ssp_pb2.StreamBidRequestsRequest(),
            metadata=(("authorization", f"Bearer {stack.sub_key}"),),
        )
    )
    submitted: list[str] = []
    deadline = time.monotonic() + 5
    while not stalled.first.wait(0.05):  # subscribed once it has seen an auction
        assert time.monotonic() < deadline, "stream subscription never became active"
        submitted.append(stack.submit().auction_id)
    # Stalled: more auctions than the SSP's buffer (16) plus what gRPC's transport absorbs.
    submitted += [stack.submit().auction_id for _ in range(800)]
    stalled.resume()
    received = [stalled.first_item]
    while (item := stalled.get(1.0)) is not None:
        received.append(item)
    stalled.cancel()
    channel.close()

    first = received[0]
    assert first.dropped_total == 0
    after_first = submitted[submitted.index(first.bid_request.id) + 1 :]
    later = [r.bid_request.id for r in received[1:]]
    assert later == [i for i in after_first if i in set(later)]  # in order, never duplicated
    lost = received[-1].dropped_total
    assert lost > 0
    # What queues for it is the SSP's buffer (16), a few the stream's thread holds
    # (STREAM_RELAY_CAPACITY) and what the transport absorbs: 28 here. Review: with the adapter's
    # default the thread held 512 more, so a reader that fell behind got 536 stale requests.
    # The literal bound, not one that grows with the constant (mutation review: 64 passed).
    assert STREAM_RELAY_CAPACITY == 4 and len(later) <= 16 + 4 + 16
    assert len(later) + lost == len(after_first)  # each auction is either delivered or counted
    assert sum(r.dropped_since_last for r in received) == lost
    assert max(r.dropped_since_last for r in received) == lost  # reported on the next delivery


class GatedReader:
    """Reads a stream's first item, then stops reading until `resume()`: a subscriber that
    stalls, so the SSP's buffer for it (and gRPC's transport buffers) fill up."""

    def __init__(self, call: Any) -> None:
        self.first = threading.Event()
        self.first_item: Any = None
        self._go = threading.Event()
        self._reader = Reader(self._gated(call))
        self._call = call

    def _gated(self, call: Any) -> Iterator[Any]:
        for n, item in enumerate(call):
            if n == 0:
                self.first_item = item
                self.first.set()
                self._go.wait(30)
                continue
            yield item

    def resume(self) -> None:
        self._go.set()

    def get(self, timeout_s: float) -> Any:
        return self._reader.get(timeout_s)

    def cancel(self) -> None:
        self._go.set()
        self._call.cancel()


def test_stop_ends_subscriber_streams_without_waiting_out_the_grace(fast_stack: Stack) -> None:
    reader = fast_stack.reader()
    stack = fast_stack
    stack.submit(mint(stack.keys))
    assert reader.get() is not None
    plain = stack.reader()  # one that is not stuck: it sees how the stream ends
    started = time.perf_counter()
    stack.ssp.stop(5.0)
    assert time.perf_counter() - started < 2.0
    reader.cancel()
    plain.join(5.0)
    # Not OK (the stream is complete, do not come back): readers reconnect on UNAVAILABLE.
    assert plain.ended is not None and plain.ended != "OK"
    assert (plain.ended.code, plain.ended.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "SERVER_STOPPING",
    )
