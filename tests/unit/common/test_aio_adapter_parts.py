"""The adapter's parts on their own (svc_common.aio_adapter): what a thread-side context
promises once its call is over, the relay's bound and its hand-over of a producer's end, and a
stream's thread given back when its reader leaves, each pinned by the mutation review; and how
the edge names a call grpc.aio cancelled and logs a stream closed at a yield
(svc_common.aio_edge)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from svc_common.aio_adapter import _pumped, _Relay, _StreamLimit, _ThreadSideContext
from svc_common.aio_edge import AioEdge, _cancelled_as
from svc_common.edge_log import observe_calls
from svc_common.errors import CALLER_DEADLINE
from tests.support.procs import wait_until
from tests.unit.common.test_aio_adapter_cancel import _endless


class _Context:
    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float | None:
        return self.remaining


def test_a_callback_added_once_the_call_is_over_is_refused_and_never_runs() -> None:
    side = _ThreadSideContext(_Context(), cancel=lambda: None)
    ran: list[int] = []
    side.end()
    assert side.add_callback(lambda: ran.append(1)) is False
    side.end()
    assert ran == [] and not side.is_active()


def _shuts_down(pool: ThreadPoolExecutor, within_s: float) -> bool:
    waiter = threading.Thread(target=pool.shutdown, kwargs={"wait": True})
    waiter.start()
    waiter.join(within_s)
    return not waiter.is_alive()


def test_cancelling_a_stream_whose_reader_stopped_reading_ends_it_at_once() -> None:
    """The SSP's reaper cancels such a stream and the loop side never looks again: the
    method's end callbacks (the reaper's unwatch, the subscription's close) must run in the
    cancel itself, and the method must see its call over."""

    async def main() -> None:
        pool = ThreadPoolExecutor(1)
        limit = _StreamLimit(1)
        sides: list[_ThreadSideContext] = []
        ended: list[int] = []
        stream = _pumped(_endless(sides, ended), pool, limit, 1)(None, _Context())
        assert await stream.__anext__() == 1
        await asyncio.sleep(0.05)  # the producer fills the relay and waits for room
        canceller = threading.Thread(target=sides[0].cancel)
        canceller.start()
        canceller.join(5)
        assert (ended, sides[0].is_active(), limit.open) == ([1], False, 0)
        await stream.aclose()
        assert _shuts_down(pool, 2)

    asyncio.run(main())


def test_a_reader_leaving_a_full_relay_frees_the_streams_thread() -> None:
    """Else every stream whose reader left while its thread waited for room kept that thread
    for good: past `max_streams` of them, new streams got a slot and never a thread."""

    async def main() -> None:
        pool = ThreadPoolExecutor(1)
        limit = _StreamLimit(1)
        stream = _pumped(_endless([], []), pool, limit, 1)(None, _Context())
        assert await stream.__anext__() == 1
        await asyncio.sleep(0.05)
        await stream.aclose()
        assert limit.open == 0
        assert _shuts_down(pool, 2), "the stream's thread was left waiting for room"

    asyncio.run(main())


def test_a_producer_that_already_failed_keeps_its_error_when_abandoned() -> None:
    """A method that ended UNAUTHENTICATED (its key disabled) and is then cancelled by the
    reaper must end with its own error, not the cancel's UNAVAILABLE (on which readers
    reconnect)."""

    class KeyDisabled(Exception):
        pass

    def failing() -> Iterator[int]:
        yield 1
        raise KeyDisabled

    async def main() -> None:
        relay = _Relay(asyncio.get_running_loop(), 4)
        relay.feed(failing())
        relay.abandon(RuntimeError("the server ended the stream"))
        assert await relay.take() == [1]
        with pytest.raises(KeyDisabled):
            await relay.take()

    asyncio.run(main())


def test_the_relay_holds_its_producer_at_capacity() -> None:
    """What bounds a stream's memory when its reader is slower than its method (mutation
    review: the relay taking one item past its capacity went unseen)."""
    loop = asyncio.new_event_loop()
    relay = _Relay(loop, 3)
    produced: list[int] = []

    def numbers() -> Iterator[int]:
        while True:
            produced.append(len(produced) + 1)
            yield produced[-1]

    producer = threading.Thread(target=relay.feed, args=(numbers(),), daemon=True)
    producer.start()
    try:
        assert wait_until(lambda: len(produced) == 4, 2)  # the 4th waits for room
        time.sleep(0.05)
        assert loop.run_until_complete(relay.take()) == [1, 2, 3]
        assert wait_until(lambda: len(produced) == 7, 2)
        time.sleep(0.05)
        assert loop.run_until_complete(relay.take()) == [4, 5, 6]
    finally:
        relay.close()
        producer.join(2)
        loop.close()
    assert not producer.is_alive()


def test_a_stream_closed_at_a_yield_is_logged_once_as_cancelled() -> None:
    """A server stream's generator closed at its `yield` (GeneratorExit, as when whoever
    iterates it stops: no real server was seen to do so) still writes the call's one line
    (mutation review survivor E3: dropping GeneratorExit there went unseen)."""

    async def endless(request: bytes, context: Any) -> AsyncIterator[bytes]:
        while True:
            yield request

    handler = AioEdge("test.uid2").wrap(
        "/t.Svc/Watch", grpc.unary_stream_rpc_method_handler(endless)
    )
    seen: list[tuple[str, str]] = []
    observe_calls(lambda method, code, seconds: seen.append((method, code)))

    async def main() -> None:
        stream = handler.unary_stream(b"x", _Context())
        assert await stream.__anext__() == b"x"
        await stream.aclose()

    try:
        asyncio.run(main())
    finally:
        observe_calls(None)
    assert seen == [("/t.Svc/Watch", "CANCELLED")]


@pytest.mark.parametrize(
    ("remaining", "logged"),
    [
        (None, ("CANCELLED", "")),  # no deadline: the caller cancelled
        (0.5, ("CANCELLED", "")),
        (0.003, ("DEADLINE_EXCEEDED", CALLER_DEADLINE)),  # the timer fires a hair early
        (0.0, ("DEADLINE_EXCEEDED", CALLER_DEADLINE)),
        (-0.2, ("DEADLINE_EXCEEDED", CALLER_DEADLINE)),
    ],
)
def test_a_cancelled_call_is_named_by_its_deadline(
    remaining: float | None, logged: tuple[str, str]
) -> None:
    assert _cancelled_as(_Context(remaining)) == logged


def test_the_thread_side_context_reads_the_calls_deadline() -> None:
    side = _ThreadSideContext(_Context(1.5), cancel=lambda: None)
    assert side.time_remaining() == 1.5
    time.sleep(0)  # nothing cached: it asks the call
