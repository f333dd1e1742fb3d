from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from dsp_svc.config import DspConfig, Mode
from dsp_svc.server import create_server as create_dsp
from ssp_svc.bidders import BidderTarget
from ssp_svc.config import SspConfig
from ssp_svc.server import create_server as create_ssp
from ssp_svc.store.accounts import AccountKind, SqliteAccountStore
from svc_common.clock import SystemClock
from svc_common.grpc_client import to_remote_error
from svc_common.grpc_server import Served
from tests.integration.ssp.fake_operator import API_KEY, FakeOperator, serve_fake_operator
from tests.unit.ssp.support import DOMAIN, KeySet
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc


@dataclass
class Stack:
    keys: KeySet
    fake: FakeOperator
    operator: Served
    ssp: Served
    dsps: list[Served]
    channel: grpc.Channel
    stub: ssp_pb2_grpc.SspServiceStub
    pub_key: str
    sub_key: str

    def submit(self, token: str = "", floor: float = 0.5, domain: str = DOMAIN) -> Any:
        return self.stub.SubmitImpression(
            ssp_pb2.SubmitImpressionRequest(
                page_domain=domain, placement_id="slot-1", floor_price=floor,
                advertising_token=token,
            ),
            metadata=(("authorization", f"Bearer {self.pub_key}"),),
            timeout=5,
        )  # fmt: skip

    def stream(self, **filters: str) -> Any:
        return self.stub.StreamBidRequests(
            ssp_pb2.StreamBidRequestsRequest(**filters),
            metadata=(("authorization", f"Bearer {self.sub_key}"),),
        )

    def reader(self) -> Reader:
        """A stream subscriber reading on its own thread, subscribed once this returns."""
        r = Reader(self.stream())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.submit()  # warm-up auctions until the subscription sees one
            if r.get(0.05) is not None:
                r.drain()
                return r
        raise AssertionError("stream subscription never became active")


class Reader:
    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: queue.Queue[Any] = queue.Queue()
        # How the stream ended: None while open, else "OK" or the error's RemoteError.
        self.ended: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self.call:
                self.items.put(item)
            self.ended = "OK"
        except grpc.RpcError as exc:
            self.ended = to_remote_error(exc)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def get(self, timeout_s: float = 2.0) -> Any:
        try:
            return self.items.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def drain(self) -> None:
        while self.get(0.05) is not None:
            pass

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(2)


def accounts(data_dir: Path) -> tuple[str, str]:
    store = SqliteAccountStore(data_dir, rng=os.urandom, clock=SystemClock())
    try:
        _, pub = store.add("news", AccountKind.PUBLISHER, ("example.com",))
        _, sub = store.add("analytics", AccountKind.SUBSCRIBER)
    finally:
        store.close()
    return pub, sub


def build_stack(tmp_path: Path, *, with_slow: bool) -> Stack:
    keys = KeySet()
    fake = FakeOperator(keys)  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
    operator = serve_fake_operator(fake)
    op = f"127.0.0.1:{operator.port}"
    fast, _ = create_dsp(
        DspConfig(name="alpha", operator=op, operator_api_key=API_KEY, base_price=1.0,
                  identified_bonus=1.5)
    )  # fmt: skip
    dsps = [fast]
    bidders = [BidderTarget("alpha", f"127.0.0.1:{fast.port}")]
    if with_slow:
        slow, _ = create_dsp(
            DspConfig(name="slowpoke", base_price=50.0, mode=Mode.SLOW, delay_ms=600)
        )
        dsps.append(slow)
        bidders.append(BidderTarget("slowpoke", f"127.0.0.1:{slow.port}"))
    pub, sub = accounts(tmp_path)
    ssp, port = create_ssp(
        SspConfig(
            data_dir=tmp_path,
            operator=op,
            operator_api_key=API_KEY,
            bidders=tuple(bidders),
            tmax_ms=150,
            early_key_refresh_min_s=0.2,
            stream_buffer=16,
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return Stack(keys, fake, operator, ssp, dsps, channel,
                 ssp_pb2_grpc.SspServiceStub(channel), pub, sub)  # fmt: skip


def teardown(s: Stack) -> None:
    s.channel.close()
    s.ssp.stop(0.5)
    for d in s.dsps:
        d.stop(0.5)
    s.operator.stop(0.2)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """SSP with two bidders: "alpha" (fast, decrypts) and "slowpoke" (600 ms > tmax 150 ms)."""
    s = build_stack(tmp_path, with_slow=True)
    yield s
    teardown(s)


@pytest.fixture
def fast_stack(tmp_path: Path) -> Iterator[Stack]:
    """SSP with the fast bidder only: auctions take milliseconds."""
    s = build_stack(tmp_path, with_slow=False)
    yield s
    teardown(s)
