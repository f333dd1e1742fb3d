"""The log context of the call being served: request id, method, and what the servicer binds
(caller site, outcome, counts). Every log event made during the call carries it, and the edge
writes it into the call's one line.

One ContextVar holds one dict per call. That is cheaper on the hot path than structlog's
contextvars (one ContextVar per key, and a walk over the whole context to merge or clear them),
which measurably cost the operator's per-call throughput (bench/operator_bench.py). A task or a
thread that copies the context (grpc.aio calls, the aio adapter's pool threads) shares the call's
dict, so what a worker thread binds still reaches the call's line."""

from __future__ import annotations

import contextvars
from typing import Any

_CALL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "uid2_call_context", default=None
)


def begin(**fields: Any) -> None:
    """Starts a call's context with `fields`, replacing whatever the thread or task had."""
    _CALL.set(fields)


def bind(**fields: Any) -> None:
    """Adds `fields` to the current call's context; outside a call, does nothing."""
    call = _CALL.get()
    if call is not None:
        call.update(fields)


def end() -> dict[str, Any]:
    """Ends the call's context and hands back its fields ({} outside a call)."""
    call = _CALL.get()
    _CALL.set(None)
    return call if call is not None else {}


def request_id() -> str | None:
    """The current call's request id (None outside a call): what calls it makes to other
    services send on as `x-request-id`, so one request reads the same in every service's log."""
    call = _CALL.get()
    rid = call.get("request_id") if call is not None else None
    return rid if isinstance(rid, str) else None


def current() -> dict[str, Any]:
    """A copy of the current call's fields ({} outside a call)."""
    call = _CALL.get()
    return dict(call) if call is not None else {}


def merge_into_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the call's fields go into every event logged during it (the
    event's own keys win)."""
    call = _CALL.get()
    if call:
        for key, value in call.items():
            event.setdefault(key, value)
    return event
