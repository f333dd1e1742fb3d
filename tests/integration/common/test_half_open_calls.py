"""Calls that send their headers and never their message hold no thread. On grpcio's sync server
each took a pool thread as its headers arrived, until its message came: a few dozen, with no API
key (the key is read with the message), and the publisher, the SSP and the DSP answered nobody,
health checks included, for as long as the calls stayed open. They are served on grpc.aio now
(svc_common.grpc_aio.start_adapted_server), where a call takes a thread once its message is in."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dsp_svc.config import DspConfig
from dsp_svc.server import create_server as create_dsp
from publisher_svc.config import PublisherConfig
from publisher_svc.server import create_server as create_publisher
from ssp_svc.config import SspConfig
from ssp_svc.server import create_server as create_ssp
from ssp_svc.store.accounts import AccountKind, SqliteAccountStore
from svc_common.clock import SystemClock
from svc_common.grpc_server import Served
from tests.support.h2_stall import END_HEADERS, HEADERS, SETTINGS, _frame, call_headers
from uid2.publisher.v1 import publisher_pb2, publisher_pb2_grpc
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc, ssp_pb2, ssp_pb2_grpc

WORKERS = 2
HALF_OPEN = 40  # more than the sync SSP had threads: WORKERS + 16 for its bid streams


@contextmanager
def _half_open_calls(port: int, path: str, count: int) -> Iterator[None]:
    """`count` calls on one connection: headers sent, no message, no deadline."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    headers = call_headers(path, f"127.0.0.1:{port}")
    frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0)
    for n in range(count):
        frames += _frame(HEADERS, END_HEADERS, 2 * n + 1, headers)
    sock.sendall(frames)
    try:
        yield
    finally:
        sock.close()


def _dsp(tmp_path: Path) -> tuple[Served, Callable[[grpc.Channel], object]]:
    served, _ = create_dsp(DspConfig(name="dsp", max_workers=WORKERS))

    def bid(channel: grpc.Channel) -> object:
        request = openrtb_pb2.BidRequest(id="a1", imp=[openrtb_pb2.Imp(id="1", bidfloor=0.1)])
        return openrtb_pb2_grpc.BidderServiceStub(channel).Bid(request, timeout=3)

    return served, bid


def _ssp(tmp_path: Path) -> tuple[Served, Callable[[grpc.Channel], object]]:
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=SystemClock(), create=True)
    _, key = store.add("news", AccountKind.PUBLISHER, ("news.example.com",))
    store.close()
    served, _ = create_ssp(SspConfig(listen="127.0.0.1:0", data_dir=tmp_path, max_workers=WORKERS))

    def submit(channel: grpc.Channel) -> object:
        request = ssp_pb2.SubmitImpressionRequest(page_domain="news.example.com", placement_id="p")
        return ssp_pb2_grpc.SspServiceStub(channel).SubmitImpression(
            request, metadata=(("authorization", f"Bearer {key}"),), timeout=3
        )

    return served, submit


def _publisher(tmp_path: Path) -> tuple[Served, Callable[[grpc.Channel], object]]:
    served, _ = create_publisher(
        PublisherConfig(
            listen="127.0.0.1:0",
            data_dir=str(tmp_path),
            operator_address="127.0.0.1:1",  # neither peer is asked by a logout
            operator_api_key="UID2-C-L-1-unused",
            site_id=1,
            ssp_address="127.0.0.1:1",
            ssp_api_key="unused",
            operator_calls_max=1,
            ssp_calls_max=1,
        )
    )

    def logout(channel: grpc.Channel) -> object:
        return publisher_pb2_grpc.PublisherServiceStub(channel).Logout(
            publisher_pb2.LogoutRequest(user_id="u1"), timeout=3
        )

    return served, logout


@pytest.mark.parametrize(
    ("start", "path"),
    [
        (_dsp, "/uid2.ssp.v1.BidderService/Bid"),
        (_ssp, "/uid2.ssp.v1.SspService/SubmitImpression"),
        (_publisher, "/uid2.publisher.v1.PublisherService/GetAdvertisingToken"),
    ],
    ids=["dsp", "ssp", "publisher"],
)
def test_calls_that_never_send_their_message_starve_nobody(
    tmp_path: Path,
    start: Callable[[Path], tuple[Served, Callable[[grpc.Channel], object]]],
    path: str,
) -> None:
    served, call = start(tmp_path)
    try:
        with (
            _half_open_calls(served.port, path, HALF_OPEN),
            grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            for _ in range(2 * WORKERS):
                call(channel)
    finally:
        served.stop(0)
