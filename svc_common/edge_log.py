"""What every front door (gRPC sync, gRPC aio, HTTP) logs the same way: one line per call with its
request id, and a bug logged by type and place only (exception text may carry request data)."""

from __future__ import annotations

import os
import time
import traceback

import structlog

from svc_common import call_context
from svc_common.logging import write_call_line

_log = structlog.get_logger("rpc")


def request_id(candidate: str | None) -> str:
    """The caller's request id when it is a sane one (short printable ASCII), else a new one."""
    if candidate and 0 < len(candidate) <= 64 and candidate.isascii() and candidate.isprintable():
        return candidate
    return os.urandom(8).hex()


def begin_call(method: str, rid: str) -> float:
    """Starts the call's log context (request id, method); returns its start time."""
    call_context.begin(request_id=rid, method=method)
    return time.perf_counter()


def end_call(start: float, code: str, reason: str) -> None:
    """Ends the call's context and writes its one log line."""
    latency_ms = round((time.perf_counter() - start) * 1000, 3)
    fields = call_context.end()
    fields["code"] = code
    if reason:
        fields["reason"] = reason
    fields["latency_ms"] = latency_ms
    # Not contextlib.suppress: that builds an object on every call of this hot path.
    try:  # noqa: SIM105
        write_call_line(fields)
    except (OSError, ValueError):
        pass  # a broken log stream must not turn an answered call into an error


def where(exc: BaseException) -> str:
    """File and line an exception came from: what a log may say of it (its text may not)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


def log_unhandled(exc: BaseException) -> None:
    _log.error("unhandled_exception", error_type=type(exc).__name__, where=where(exc))
