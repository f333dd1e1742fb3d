"""A channel to a peer reconnects within about a second of the peer coming back, however long
it was down. gRPC's default backoff grows to two minutes: after a 90 s operator outage the
SSP's and DSP's opt-out streams came back 24-31 s late."""

from __future__ import annotations

import contextlib
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svc_common.grpc_aio import AioServed, start_aio_server
from svc_common.tls_reload import open_channel

DOWN_S = 10.0  # by then gRPC's default backoff has grown past 6 s


def _serve(listen: str) -> AioServed:
    s = start_aio_server(
        listen=listen,
        domain="test.uid2",
        register=lambda _server: None,
        service_names=[],
        served_class=AioServed,
    )
    s.set_serving(True)
    return s


def test_a_channel_reconnects_within_a_second_of_its_peer_coming_back() -> None:
    first = _serve("127.0.0.1:0")
    port = first.port
    channel = open_channel(f"127.0.0.1:{port}", None)
    try:
        check = health_pb2_grpc.HealthStub(channel).Check
        check(health_pb2.HealthCheckRequest(), timeout=5)
        first.stop(0)
        deadline = time.monotonic() + DOWN_S
        while time.monotonic() < deadline:  # the channel keeps trying while the peer is down
            with contextlib.suppress(grpc.RpcError):
                check(health_pb2.HealthCheckRequest(), timeout=0.5)
            time.sleep(0.5)
        again = _serve(f"127.0.0.1:{port}")
        try:
            back = time.monotonic()
            check(health_pb2.HealthCheckRequest(), timeout=20, wait_for_ready=True)
            assert time.monotonic() - back < 2.5
        finally:
            again.stop(0)
    finally:
        channel.close()
