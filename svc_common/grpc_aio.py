"""The asyncio gRPC server model every service runs on (`start_adapted_server`; the operator,
whose request path is mostly CPU-only, through `start_aio_server` itself).

Why: on the sync server every call hops from the poller thread to a pool thread and back, and
with 32 calls in flight the threads fight for the GIL; the same Python work per call cost about
1.6x the CPU there (measured: GenerateToken ~550 µs of server CPU per call sync, ~340 µs aio, on
this 2-core box). The aio server runs handlers on one event loop thread, behind the aio edge
(`aio_edge`), with sync servicers adapted by `aio_adapter`. The loop lives in a background
thread, so `start_aio_server` returns a plain handle (`Served`), and callers need not be
async."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from svc_common.aio_adapter import RELAY_CAPACITY, SyncServicerAdapter
from svc_common.aio_edge import AioEdge, EdgeRegistrar
from svc_common.event_loop import finish_pending_tasks
from svc_common.grpc_server import Served, bind_port, server_options
from svc_common.reflection import enable_reflection
from svc_common.tls import ServerTls
from svc_common.unknown_method import UnknownMethods

S = TypeVar("S", bound=Served)


def start_aio_server(
    *,
    listen: str,
    domain: str,
    register: Callable[[Any], None],
    service_names: Sequence[str],
    served_class: type[S],
    tls: ServerTls | None = None,
) -> S:
    """Builds, binds and starts a server that reports NOT_SERVING until `set_serving(True)`.
    `listen` is HOST:PORT; port 0 picks a free port, returned in `Served.port`. With `tls` the
    port serves TLS only. `register` adds the services, through the edge."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[tuple[Any, int, Any]] = concurrent.futures.Future()
    names = tuple(service_names)

    async def start() -> tuple[Any, int, Any]:
        server = grpc.aio.server(options=server_options())
        register(EdgeRegistrar(server, AioEdge(domain)))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(names, server)
        server.add_generic_rpc_handlers((UnknownMethods(domain),))  # last, not edge-wrapped
        port = bind_port(server, listen, tls)
        await server.start()
        return server, port, health_servicer

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(start()))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        loop.run_forever()
        finish_pending_tasks(loop)
        loop.close()

    thread = threading.Thread(target=run, name="grpc-aio", daemon=True)
    thread.start()
    server, port, health_servicer = started.result(timeout=30)
    served = served_class(
        server=server,
        port=port,
        health=health_servicer,
        service_names=names,
        loop=loop,
        thread=thread,
    )
    served.set_serving(False)
    return served


def start_adapted_server(
    *,
    listen: str,
    domain: str,
    servicer: Any,
    service: Any,
    add_servicer: Callable[[Any, Any], None],
    blocking: Collection[str],
    workers: int,
    max_streams: int = 0,
    relay_capacity: int = RELAY_CAPACITY,
    owns: ExitStack | None = None,
    tls: ServerTls | None = None,
) -> Served:
    """A sync servicer (`service`, its ServiceDescriptor; `add_servicer`, the generated
    add_..._to_server) served on grpc.aio through `SyncServicerAdapter`: its `blocking` methods
    run in a pool of `workers` threads, each stream in a thread of its own (`max_streams` at
    most; `relay_capacity` messages ahead of its reader). Not on the sync server, which gives a
    call a pool thread as soon as its headers arrive: calls that sent their headers and never
    their message (no API key needed, as the key is read with the message) took every thread,
    and the service answered nobody. Here a call takes a thread only once its message is in.
    `owns`: what the service opened for this server, closed at the stop after the pools (and at
    once if the start fails)."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{domain}-call")
    stream_pool = ThreadPoolExecutor(max(1, max_streams), thread_name_prefix=f"{domain}-stream")
    adapter = SyncServicerAdapter(
        servicer,
        service,
        blocking=blocking,
        pool=pool,
        stream_pool=stream_pool,
        max_streams=max_streams,
        relay_capacity=relay_capacity,
    )

    def shut_pools() -> None:
        # Not waited for: the drain's grace is over, and its callers were answered.
        pool.shutdown(wait=False, cancel_futures=True)
        stream_pool.shutdown(wait=False, cancel_futures=True)

    try:
        served = start_aio_server(
            listen=listen,
            domain=domain,
            register=lambda server: add_servicer(adapter, server),
            service_names=(service.full_name,),
            served_class=Served,
            tls=tls,
        )
    except BaseException:
        shut_pools()
        raise
    if owns is not None:
        served.on_stop.append(owns.pop_all().close)
    served.on_stop.append(shut_pools)  # runs first (on_stop runs newest first)
    return served
