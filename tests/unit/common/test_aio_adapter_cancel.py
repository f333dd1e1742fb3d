"""A pumped stream cancelled from another thread (the SSP's stream reaper) while its call also
ends on the loop (its reader cancels): the method's end callbacks run once, its slot comes back
once, and its producer thread ends (svc_common.aio_adapter)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from svc_common.aio_adapter import _pumped, _StreamLimit
from svc_common.errors import ErrorKind, ServiceError


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None


def _endless(sides: list[Any], ended: list[int]) -> Any:
    def method(_request: Any, side: Any) -> Iterator[int]:
        sides.append(side)
        side.add_callback(lambda: ended.append(1))
        n = 0
        while side.is_active():
            n += 1
            yield n
            if n % 50 == 0:
                time.sleep(0.0005)

    return method


def test_cancel_from_a_thread_racing_the_calls_end_gives_everything_back_once() -> None:
    async def main() -> None:
        pool = ThreadPoolExecutor(8)
        limit = _StreamLimit(4)
        rng = random.Random(7)
        for _ in range(100):
            sides: list[Any] = []
            ended: list[int] = []
            stream = _pumped(_endless(sides, ended), pool, limit, 16)(None, _Context())
            for _ in range(rng.randint(1, 30)):
                await stream.__anext__()
            canceller = threading.Thread(target=sides[0].cancel)
            canceller.start()
            if rng.random() < 0.5:
                await asyncio.sleep(0)
            # The cancel's STREAM_CANCELLED, when it reached the loop side first.
            with contextlib.suppress(ServiceError):
                await stream.aclose()
            canceller.join(5)
            await asyncio.sleep(0.002)
            assert (len(ended), limit.open) == (1, 0)
        pool.shutdown(wait=False)
        waiter = threading.Thread(target=pool.shutdown, kwargs={"wait": True})
        waiter.start()
        waiter.join(5)
        assert not waiter.is_alive(), "a producer thread was left blocked"

    asyncio.run(main())


def test_a_cancelled_stream_whose_reader_waits_ends_with_stream_cancelled() -> None:
    async def main() -> None:
        pool = ThreadPoolExecutor(2)
        limit = _StreamLimit(1)
        sides: list[Any] = []
        ended: list[int] = []

        def slow(_request: Any, side: Any) -> Iterator[int]:
            sides.append(side)
            side.add_callback(lambda: ended.append(1))
            yield 1
            while side.is_active():
                time.sleep(0.01)

        stream = _pumped(slow, pool, limit, 16)(None, _Context())
        assert await stream.__anext__() == 1
        threading.Thread(target=sides[0].cancel).start()
        with pytest.raises(ServiceError) as ended_with:
            await stream.__anext__()
        assert (ended_with.value.kind, ended_with.value.reason) == (
            ErrorKind.UNAVAILABLE,
            "STREAM_CANCELLED",
        )
        assert (ended, limit.open) == ([1], 0)
        pool.shutdown(wait=True)

    asyncio.run(main())
