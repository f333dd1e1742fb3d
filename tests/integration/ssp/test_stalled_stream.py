"""A bid stream whose reader stopped reading, its key then disabled: the SSP gives back what the
stream held within a few seconds. Its method ends at its own key check, but its last message
waits for the reader, and grpc.aio cannot end such a call from the server; the stream reaper
then gives back its slot, which it would otherwise hold for as long as the reader kept the
connection open (svc_common.aio_adapter)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ssp_svc.config import SspConfig
from ssp_svc.server import create_server
from ssp_svc.store.accounts import AccountKind, SqliteAccountStore
from svc_common.clock import SystemClock
from svc_common.grpc_client import error_info
from svc_common.grpc_server import Served
from tests.support.h2_stall import StalledStream
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc

STREAM = "/uid2.ssp.v1.SspService/StreamBidRequests"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteAccountStore]:
    s = SqliteAccountStore(tmp_path, rng=os.urandom, clock=SystemClock(), create=True)
    yield s
    s.close()


def _refusal(stub: ssp_pb2_grpc.SspServiceStub, key: str) -> str:
    """The reason a new bid stream for `key` is refused ("" if it opens)."""
    stream = stub.StreamBidRequests(
        ssp_pb2.StreamBidRequestsRequest(),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=1,
    )
    try:
        next(stream)
    except grpc.RpcError as err:
        if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return ""
        info = error_info(err)
        return str(info.reason) if info else str(err.code().name)
    return ""


def test_a_stalled_stream_of_a_disabled_key_gives_its_slot_back(
    tmp_path: Path, store: SqliteAccountStore
) -> None:
    _, pub = store.add("news", AccountKind.PUBLISHER, ("news.example.com",))
    _, stalled_key = store.add("stalled", AccountKind.SUBSCRIBER)
    _, reader_key = store.add("reader", AccountKind.SUBSCRIBER)
    _, late_key = store.add("late", AccountKind.SUBSCRIBER)
    # One subscriber at a time, so two stream slots in all (ssp_svc.server).
    served: Served
    served, port = create_server(
        SspConfig(listen="127.0.0.1:0", data_dir=tmp_path, max_subscribers=1)
    )
    address = f"127.0.0.1:{port}"
    stalled = StalledStream(address, STREAM, stalled_key)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = ssp_pb2_grpc.SspServiceStub(channel)
            time.sleep(0.5)  # the stream is open
            for _ in range(5):  # the first waits for the reader's window, which stays 0
                stub.SubmitImpression(
                    ssp_pb2.SubmitImpressionRequest(
                        page_domain="news.example.com", placement_id="p"
                    ),
                    metadata=(("authorization", f"Bearer {pub}"),),
                    timeout=5,
                )
            store.set_disabled(AccountKind.SUBSCRIBER, "stalled", True)
            time.sleep(2.0)  # past the stalled stream's own key check: its method has ended
            reading = stub.StreamBidRequests(
                ssp_pb2.StreamBidRequestsRequest(),
                metadata=(("authorization", f"Bearer {reader_key}"),),
                timeout=30,
            )
            time.sleep(0.5)  # open: the hub's one subscriber, the second slot
            # With the stalled stream's slot still held, a third stream is refused for want
            # of a slot; once it is given back, by the hub, which has its one subscriber.
            deadline = time.monotonic() + 8
            while (reason := _refusal(stub, late_key)) != "TOO_MANY_SUBSCRIBERS":
                assert reason == "TOO_MANY_STREAMS", reason
                assert time.monotonic() < deadline, "the stalled stream kept its slot"
                time.sleep(0.2)
            reading.cancel()
    finally:
        stalled.close()
        served.stop(1)
