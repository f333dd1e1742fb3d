"""Closing an asyncio loop that ran in a background thread (the operator's gRPC and HTTP front
doors) without leaving tasks for the garbage collector."""

from __future__ import annotations

import asyncio

import structlog

# How long a stopped server's leftover tasks get to unwind after being cancelled.
FINISH_TASKS_S = 5.0


def finish_pending_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await what is still pending on a stopped `loop`, then close its async
    generators, as `asyncio.run` does before closing. Call it after `run_forever` returns.

    Why: grpc can leave an RPC's task waiting on a handler that finished just as the loop
    stopped. A closed loop never runs it again; when the garbage collector later destroys it,
    grpc prints a GeneratorExit traceback and asyncio logs "Task was destroyed but it is
    pending!" into whatever runs next (a CI run failed on exactly that noise). A task that
    ignores its cancellation for FINISH_TASKS_S is left as it is, and counted in the log."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=FINISH_TASKS_S))
        if stuck:
            structlog.get_logger("server").warning("tasks_left_pending", tasks=len(stuck))
    loop.run_until_complete(loop.shutdown_asyncgens())
