"""finish_pending_tasks: a stopped loop's leftover tasks are cancelled and run to their end
before the loop closes, so none is left for the garbage collector to destroy."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from svc_common import event_loop
from svc_common.event_loop import finish_pending_tasks


def test_leftover_tasks_are_cancelled_and_their_cleanup_awaited() -> None:
    loop = asyncio.new_event_loop()
    steps: list[str] = []

    async def left_behind() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # cleanup that needs the loop again
            steps.append("cleaned up")
            raise

    async def finished() -> None:
        steps.append("finished")

    try:
        task = loop.create_task(left_behind())
        done = loop.create_task(finished())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert not task.done() and done.done()
        finish_pending_tasks(loop)
        assert task.cancelled() and steps == ["finished", "cleaned up"]
        assert not [t for t in asyncio.all_tasks(loop) if not t.done()]
    finally:
        loop.close()


def test_a_loop_with_nothing_pending_is_left_as_it_was() -> None:
    loop = asyncio.new_event_loop()
    try:
        finish_pending_tasks(loop)
        assert not loop.is_closed() and not asyncio.all_tasks(loop)
    finally:
        loop.close()


def test_a_task_that_ignores_cancellation_is_left_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop, "FINISH_TASKS_S", 0.1)
    loop = asyncio.new_event_loop()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # refuses to end

    try:
        task = loop.create_task(stubborn())
        loop.run_until_complete(asyncio.sleep(0.01))
        with capture_logs() as logs:
            finish_pending_tasks(loop)
        assert not task.done()
        assert [(e["event"], e["tasks"]) for e in logs] == [("tasks_left_pending", 1)]
    finally:
        task.cancel()  # a last try, so the loop can close without a warning about it
        loop.close()
