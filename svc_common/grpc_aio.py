"""The asyncio gRPC server model, for services whose request path is CPU-only (the operator).

Why: on the sync server every call hops from the poller thread to a pool thread and back, and
with 32 calls in flight the threads fight for the GIL; the same Python work per call cost about
1.6x the CPU there (measured: GenerateToken ~550 µs of server CPU per call sync, ~340 µs aio, on
this 2-core box). The aio server runs handlers on one event loop thread.

Servicers stay plain sync classes (grpc_testing drives them as they are). `SyncServicerAdapter`
presents one to the aio server: methods that only compute run inline on the loop; methods that
block (durable writes, long scans) run in a thread pool; server-streaming methods are pumped from
a worker thread. The loop lives in a background thread, so `start_aio_server` returns the same
kind of handle (`Served`) as the sync `start_server`, and callers need not be async."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from svc_common.edge_log import end_call, log_unhandled
from svc_common.errors import ServiceError, resource_exhausted
from svc_common.grpc_edge import (
    Parse,
    begin_call,
    internal_status,
    is_quiet,
    parse_request,
    status_for,
    wrap_handler,
)
from svc_common.grpc_server import MAX_MESSAGE_BYTES, Served, bind_port


class AioEdge:
    """The aio twin of `EdgeInterceptor`: same ErrorInfo mapping, same one line per call.

    Not a grpc.aio interceptor: those run a coroutine on every call just to pick the handler.
    The edge wraps each method handler once, as services register (`EdgeRegistrar`)."""

    def __init__(self, domain: str) -> None:
        self._domain = domain

    def wrap(self, method: str, handler: Any) -> Any:
        """`handler` of `method` ("/pkg.Service/Method") behind the edge; quiet ones as is."""
        if handler is None or is_quiet(method):
            return handler
        return wrap_handler(
            handler,
            lambda b, parse: self._unary(b, parse, method),
            lambda b, parse: self._stream(b, parse, method),
        )

    async def _abort(self, context: Any, start: float, exc: BaseException) -> None:
        """Logs the call's line, then aborts it with the status `exc` maps to. The line goes
        out first so it never trails the answer the client already has."""
        if isinstance(exc, ServiceError):
            end_call(start, exc.kind.value, exc.reason)
            await context.abort_with_status(status_for(exc, self._domain))
        log_unhandled(exc)
        end_call(start, "INTERNAL", "INTERNAL")
        await context.abort_with_status(internal_status(self._domain))

    def _unary(self, behavior: Any, parse: Parse, method: str) -> Any:
        async def call(raw: bytes, context: Any) -> Any:
            start = begin_call(method, context.invocation_metadata())
            try:
                response = await behavior(parse_request(parse, raw), context)
            except asyncio.CancelledError:
                end_call(start, "CANCELLED", "")
                raise
            except grpc.aio.AbortError:
                end_call(start, _code_name(context), "")
                raise
            except Exception as exc:
                await self._abort(context, start, exc)
            end_call(start, "OK", "")
            return response

        return call

    def _stream(self, behavior: Any, parse: Parse, method: str) -> Any:
        async def call(raw: bytes, context: Any) -> AsyncIterator[Any]:
            start = begin_call(method, context.invocation_metadata())
            try:
                async for item in behavior(parse_request(parse, raw), context):
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                end_call(start, "CANCELLED", "")
                raise
            except grpc.aio.AbortError:
                end_call(start, _code_name(context), "")
                raise
            except Exception as exc:
                await self._abort(context, start, exc)
            end_call(start, "OK", "")

        return call


class _EdgeGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """A generic handler (calls by method name: reflection clients, grpc-js, buf curl) whose
    handlers are wrapped by the edge, once per method."""

    def __init__(self, inner: Any, edge: AioEdge) -> None:
        self._inner = inner
        self._edge = edge
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._edge.wrap(method, self._inner.service(handler_call_details))
            if wrapped is not None:
                self._wrapped[method] = wrapped
        return wrapped


class EdgeRegistrar:
    """Stands in for a grpc.aio server while services register on it: every handler they add
    goes behind `edge`. Registered methods (what generated stubs call) are wrapped here, once;
    anything else reaches the server unchanged."""

    def __init__(self, server: Any, edge: AioEdge) -> None:
        self._server = server
        self._edge = edge

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service,
            {name: self._edge.wrap(f"/{service}/{name}", h) for name, h in handlers.items()},
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_EdgeGenericHandler(h, self._edge) for h in handlers)
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def _code_name(context: Any) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "ABORTED"


class _ThreadSideContext:
    """What a sync streaming method sees of its call while it runs in a worker thread."""

    def __init__(self, context: Any) -> None:
        self._metadata = context.invocation_metadata()
        self._active = True

    def invocation_metadata(self) -> Any:
        return self._metadata

    def is_active(self) -> bool:
        return self._active

    def end(self) -> None:
        self._active = False


class SyncServicerAdapter:
    """Exposes a sync servicer's methods (named by `service`, a ServiceDescriptor) as the
    coroutines grpc.aio calls. `blocking` names unary methods to run in `pool`."""

    def __init__(
        self,
        servicer: Any,
        service: Any,
        *,
        blocking: Collection[str],
        pool: concurrent.futures.Executor,
        stream_pool: concurrent.futures.Executor,
        max_streams: int = 64,
    ) -> None:
        # Each open stream holds a `stream_pool` thread: past the limit a new stream is refused
        # (RESOURCE_EXHAUSTED) rather than left waiting for a thread without a word.
        streams = _StreamLimit(max_streams)
        for m in service.methods:
            method = getattr(servicer, m.name)
            if m.server_streaming:
                setattr(self, m.name, _pumped(method, stream_pool, streams))
            elif m.name in blocking:
                setattr(self, m.name, _offloaded(method, pool))
            else:
                setattr(self, m.name, _inline(method))


def _inline(method: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def call(request: Any, context: Any) -> Any:
        return method(request, context)

    return call


def _offloaded(
    method: Callable[[Any, Any], Any], pool: concurrent.futures.Executor
) -> Callable[[Any, Any], Any]:
    async def call(request: Any, context: Any) -> Any:
        # The method runs in a copy of this call's context: nothing leaks into the pool thread,
        # and the copy shares the call's log context (svc_common.call_context), so what the
        # method binds, such as the caller's site, still reaches the call's line.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            pool, ctx.run, method, request, context
        )

    return call


class _StreamLimit:
    """Open streams of one adapter; touched only on the event loop thread, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


def _pumped(
    method: Callable[[Any, Any], Any],
    pool: concurrent.futures.Executor,
    streams: _StreamLimit,
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        if streams.open >= streams.limit:
            raise resource_exhausted(
                "TOO_MANY_STREAMS",
                f"at most {streams.limit} streams may be open at once; retry later",
            )
        streams.open += 1
        try:
            async for item in _pump(method, pool, request, context):
                yield item
        finally:
            streams.open -= 1

    return call


async def _pump(
    method: Callable[[Any, Any], Any],
    pool: concurrent.futures.Executor,
    request: Any,
    context: Any,
) -> AsyncIterator[Any]:
    """Runs the sync generator `method` in `pool`, in a copy of the call's context (as for
    pooled unary calls). The thread runs ahead of the loop through a bounded `_Relay`: one
    executor hop per item capped a stream at ~4k messages/s (an opt-out backlog replay)."""
    loop = asyncio.get_running_loop()
    side = _ThreadSideContext(context)
    relay = _Relay(loop)
    ctx = contextvars.copy_context()
    items = iter(method(request, side))
    pool.submit(ctx.run, relay.feed, items)
    try:
        while (batch := await relay.take()) is not None:
            for item in batch:
                yield item
    finally:
        # The sync generator polls is_active() and ends by itself; closing it from here
        # could race the thread still running it. `close` wakes a thread waiting for room.
        side.end()
        relay.close()


class _Relay:
    """A bounded hand-off from one producer thread to the event loop: the thread blocks while
    `capacity` items wait; the loop takes whatever has arrived in one go."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 512) -> None:
        self._loop = loop
        self._capacity = capacity
        self._items: list[Any] = []
        self._cond = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False
        self._error: BaseException | None = None
        self._closed = False

    # -- producer thread -----------------------------------------------------------------

    def feed(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    # The call is gone; close the generator here, in the thread running it.
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()
                    return
        except BaseException as exc:  # handed to the loop side, which raises it in the call
            self._finish(exc)
        else:
            self._finish(None)

    def _put(self, item: Any) -> bool:
        with self._cond:
            while len(self._items) >= self._capacity and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)
        return True

    def _finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._finished = True
            self._error = error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)

    # -- event loop ----------------------------------------------------------------------

    async def take(self) -> list[Any] | None:
        """Every item that has arrived (waiting for one); None once the producer is done."""
        while True:
            with self._cond:
                if self._items:
                    batch, self._items = self._items, []
                    self._cond.notify_all()
                    return batch
                if self._finished:
                    if self._error is not None:
                        raise self._error
                    return None
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class AioServed(Served):
    """A `Served` whose server runs on an asyncio loop in a background thread."""

    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None

    def _on_loop(self, coro: Any) -> Any:
        if self.loop is None:
            raise RuntimeError("the server's event loop is gone")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def _set_health(self, name: str, status: int) -> None:
        self._on_loop(self.health.set(name, status))

    def _stop_server(self, grace_s: float) -> None:
        if self.loop is None or self.loop.is_closed():
            return
        self._on_loop(self.server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(timeout=10)


S = TypeVar("S", bound=AioServed)


def start_aio_server(
    *,
    listen: str,
    domain: str,
    register: Callable[[Any], None],
    service_names: Sequence[str],
    served_class: type[S],
) -> S:
    """Like `start_server`, on grpc.aio: NOT_SERVING until `set_serving(True)`."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[tuple[Any, int, Any]] = concurrent.futures.Future()
    names = tuple(service_names)

    async def start() -> tuple[Any, int, Any]:
        server = grpc.aio.server(
            # No SO_REUSEPORT (grpc's default turns it on): a second server started on a port in
            # use must fail, not silently take half the connections.
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        register(EdgeRegistrar(server, AioEdge(domain)))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = bind_port(server, listen)
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
