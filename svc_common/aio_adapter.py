"""Plain sync servicers on the grpc.aio server. `SyncServicerAdapter` presents one to the aio
server: methods that only compute run inline on the loop; methods that block (durable writes, long
scans) run in a thread pool; server-streaming methods run in a worker thread that feeds the loop
through a bounded relay. Servicers stay sync classes, so grpc_testing drives them as they are."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Collection, Iterator
from typing import Any

from svc_common.errors import resource_exhausted, unavailable

# How far a stream's thread runs ahead of the loop by default: room enough that an opt-out backlog
# replay is not one executor hop per message.
RELAY_CAPACITY = 512


class _ThreadSideContext:
    """What a sync streaming method sees of its call while it runs in a worker thread: its
    metadata and deadline, whether it is still on, callbacks run when it ends (`end`, once),
    and `cancel`, as on the sync server (the SSP's stream reaper ends with it a stream whose
    reader stopped reading)."""

    def __init__(self, context: Any, cancel: Callable[[], None]) -> None:
        self._metadata = context.invocation_metadata()
        self._context = context
        self._cancel = cancel
        self._active = True
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def invocation_metadata(self) -> Any:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()  # type: ignore[no-any-return]  # grpc.aio's

    def is_active(self) -> bool:
        return self._active

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Runs `callback` when the call ends; False, and never runs it, once it has ended (as
        grpc's)."""
        with self._lock:
            if self._active:
                self._callbacks.append(callback)
                return True
        return False

    def cancel(self) -> None:
        """Ends the call from any thread (`_pump`)."""
        self._cancel()

    def end(self) -> None:
        with self._lock:
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


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
        relay_capacity: int = RELAY_CAPACITY,
    ) -> None:
        # Each open stream holds a `stream_pool` thread: past the limit a new stream is refused
        # (RESOURCE_EXHAUSTED) rather than left waiting for a thread without a word.
        # `relay_capacity`: the messages a stream's thread may run ahead of its reader (_Relay).
        streams = _StreamLimit(max_streams)
        for m in service.methods:
            method = getattr(servicer, m.name)
            if m.server_streaming:
                setattr(self, m.name, _pumped(method, stream_pool, streams, relay_capacity))
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
    """Open streams of one adapter. A stream's slot is taken on the loop and given back on it,
    or from a cancelling thread (`_pump`): hence the lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def take(self) -> Callable[[], None] | None:
        """A slot, as the callable that gives it back (once, however often called); None when
        every slot is taken."""
        with self._lock:
            if self.open >= self.limit:
                return None
            self.open += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            with self._lock:
                if not given_back:
                    given_back = True
                    self.open -= 1

        return give_back


def _pumped(
    method: Callable[[Any, Any], Any],
    pool: concurrent.futures.Executor,
    streams: _StreamLimit,
    relay_capacity: int,
) -> Callable[[Any, Any], AsyncGenerator[Any, None]]:
    async def call(request: Any, context: Any) -> AsyncGenerator[Any, None]:
        give_back = streams.take()
        if give_back is None:
            raise resource_exhausted(
                "TOO_MANY_STREAMS",
                f"at most {streams.limit} streams may be open at once; retry later",
            )
        try:
            # Closed here, not left to the garbage collector's finalizer (a later turn of the
            # loop): the pump's thread, should it wait for room, is freed as the call ends.
            async with contextlib.aclosing(
                _pump(method, pool, request, context, give_back, relay_capacity)
            ) as pump:
                async for item in pump:
                    yield item
        finally:
            give_back()

    return call


async def _pump(
    method: Callable[[Any, Any], Any],
    pool: concurrent.futures.Executor,
    request: Any,
    context: Any,
    give_back: Callable[[], None],
    relay_capacity: int,
) -> AsyncGenerator[Any, None]:
    """Runs the sync generator `method` in `pool`, in a copy of the call's context (as for
    pooled unary calls). The thread runs ahead of the loop through a bounded `_Relay`: one
    executor hop per item capped a stream at ~4k messages/s (an opt-out backlog replay).

    `cancel` on the method's context ends the call with UNAVAILABLE `STREAM_CANCELLED` when the
    loop side waits for items. grpc.aio cannot end a call from the server while a message waits
    for its reader to take it (no cancel; a status cannot be queued behind a pending message):
    such a call, whose reader stopped reading, gives back its thread, its slot (`give_back`)
    and what its method held (`end`'s callbacks) at once, and stays open on the wire, holding
    no more than its coroutine, until its reader's connection closes."""
    loop = asyncio.get_running_loop()
    relay = _Relay(loop, relay_capacity)

    def cancel() -> None:
        relay.abandon(unavailable("STREAM_CANCELLED", "the server ended the stream"))
        give_back()
        side.end()

    side = _ThreadSideContext(context, cancel)
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

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = RELAY_CAPACITY) -> None:
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

    def abandon(self, error: BaseException) -> None:
        """From any thread: the producer stops at its next item (its generator closed in its
        thread), and the loop side, should it wait for items, gets `error` instead."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if not self._finished:
                self._finished, self._error = True, error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
