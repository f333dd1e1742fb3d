"""A channel to a peer reconnects within about a second of the peer coming back, however long
it was down. gRPC's default backoff grows to two minutes: after a 90 s operator outage the
SSP's and DSP's opt-out streams came back 24-31 s late."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svc_common.tls_reload import open_channel
from tests.support.health_server import health_only_server

DOWN_S = 10.0  # by then gRPC's default backoff has grown past 6 s


def test_a_channel_reconnects_within_a_second_of_its_peer_coming_back() -> None:
    first = health_only_server("127.0.0.1:0")
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
        again = health_only_server(f"127.0.0.1:{port}")
        try:
            back = time.monotonic()
            check(health_pb2.HealthCheckRequest(), timeout=20, wait_for_ready=True)
            assert time.monotonic() - back < 2.5
        finally:
            again.stop(0)
    finally:
        channel.close()


def test_a_peer_slow_to_answer_a_new_connection_is_still_reached() -> None:
    """gRPC takes grpc.min_reconnect_backoff_ms as its connect timeout too: set to 100 ms, a
    connection whose server took 1.2 s to answer was abandoned and tried again forever."""
    served = health_only_server("127.0.0.1:0")
    loop = asyncio.new_event_loop()
    attempts: list[int] = []

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        attempts.append(1)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", served.port)
        tasks.add(asyncio.ensure_future(pipe(client_r, server_w, 0)))
        tasks.add(asyncio.ensure_future(pipe(server_r, client_w, 1.2)))  # a slow link

    tasks: set[asyncio.Future[None]] = set()

    async def listen() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    proxy = loop.run_until_complete(listen())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    channel = open_channel(f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}", None)
    try:
        check = health_pb2_grpc.HealthStub(channel).Check
        check(health_pb2.HealthCheckRequest(), timeout=12, wait_for_ready=True)
        assert len(attempts) <= 2
    finally:
        channel.close()
        served.stop(0)

        async def shut() -> None:
            # Pending tasks left to the garbage collector log "Task was destroyed but it is
            # pending!" whenever it runs: into a later test's captured stderr, once.
            proxy.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
