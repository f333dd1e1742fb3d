"""`create_server(config)`: load all state into memory, start the gRPC server (health, reflection,
the edge around every handler), start the cross-process sync thread (and scheduled rotation's,
when the config asks for it), then report SERVING.

The operator runs on grpc.aio (svc_common.grpc_aio): its request path reads only in-memory
snapshots, so token calls run inline on the event loop; durable writes and 5,000-item scans go to
a thread pool, WatchOptOuts streams to a pool of their own."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.servicer import OperatorServicer
from svc_common.aio_adapter import SyncServicerAdapter
from svc_common.clock import Clock, SystemClock
from svc_common.grpc_aio import start_aio_server
from svc_common.grpc_server import Served
from svc_common.stop_signals import StopRequested
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

_log = structlog.get_logger("operator")

SERVICE_NAME = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
ERROR_DOMAIN = "operator.uid2"


# Unary calls that write to disk or walk up to 5,000 items: kept off the event loop.
BLOCKING_METHODS = frozenset({"OptOut", "MapIdentity", "GetOptOutStatus"})
# Each open WatchOptOuts stream holds one of these threads while it waits for opt-outs (an
# idle thread: a stack and a wait). At 64, four participants at their 16 each
# (optout.MAX_WATCH_STREAMS_PER_CLIENT) locked every other decryptor out of opt-outs.
MAX_STREAMS = 256


@dataclass
class OperatorServed(Served):
    """The operator's server handle: ends opt-out streams before draining (`before_drain`)."""

    operator: Operator | None = None
    # The official HTTP API's bound port when `config.http_listen` is set (operator_svc.http).
    http_port: int | None = None


def create_server(
    config: OperatorConfig,
    *,
    clock: Clock | None = None,
    rng: Callable[[int], bytes] | None = None,
    stop: StopRequested | None = None,
) -> tuple[OperatorServed, int]:
    """Returns the started server (SERVING once state is loaded) and its bound port. Without a
    clock or rng, the system's are used: this is the edge where those defaults belong. `stop`
    set during start-up cuts short a wait for another process's store lock; the caller then
    stops the server it gets."""
    operator = Operator.open(
        config,
        clock=SystemClock() if clock is None else clock,
        rng=os.urandom if rng is None else rng,
        give_up=(lambda: False) if stop is None else stop.is_set,
    )
    servicer = OperatorServicer(operator)

    pool = ThreadPoolExecutor(config.max_workers, thread_name_prefix="op-blocking")
    stream_pool = ThreadPoolExecutor(MAX_STREAMS, thread_name_prefix="op-stream")
    adapter = SyncServicerAdapter(
        servicer,
        operator_pb2.DESCRIPTOR.services_by_name["OperatorService"],
        blocking=BLOCKING_METHODS,
        pool=pool,
        stream_pool=stream_pool,
        max_streams=MAX_STREAMS,
    )

    def register(server: Any) -> None:
        # The adapter has the servicer's methods, as coroutines (duck-typed for grpc.aio).
        operator_pb2_grpc.add_OperatorServiceServicer_to_server(adapter, server)  # type: ignore[arg-type]  # duck-typed servicer

    def shut_pools() -> None:
        # Not waited for: the drain's grace is over, and a write still waiting on another
        # process's SQLite lock (up to the 30 s busy timeout) must not hold the stop up. Its
        # caller was already answered UNAVAILABLE; the process exit bounds the rest.
        pool.shutdown(wait=False, cancel_futures=True)
        stream_pool.shutdown(wait=False, cancel_futures=True)

    try:
        served = start_aio_server(
            listen=config.listen,
            domain=ERROR_DOMAIN,
            register=register,
            service_names=(SERVICE_NAME,),
            served_class=OperatorServed,
            tls=config.tls,
        )
    except BaseException:
        shut_pools()
        operator.close()
        raise
    served.operator = operator
    served.readings = operator.readings
    served.before_drain.append(operator.close_streams)
    served.before_drain.append(operator.stop_rotation)
    served.on_stop.append(operator.close)
    served.on_stop.append(shut_pools)
    if config.http_listen is not None:
        from operator_svc.http.app import HttpFrontDoor

        front = HttpFrontDoor(operator, config.http_listen, tls=config.tls)
        try:
            served.http_port = front.start()
        except BaseException:
            served.stop(0)
            raise
        # The HTTP drain starts with the gRPC one, so their graces overlap; its end runs
        # before operator.close (on_stop runs in reverse).
        served.before_drain.append(front.begin_stop)
        served.on_stop.append(front.stop)
        served.readings = lambda: {**operator.readings(), **front.readings()}
    operator.start_sync()
    operator.start_rotation()
    served.set_serving(True)
    served.not_serving_once_lost(operator.store.on_lost)
    return served, served.port
