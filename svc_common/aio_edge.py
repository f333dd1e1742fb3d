"""The server edge: binds a call's log context, parses its request, maps domain errors to
statuses with a `google.rpc.ErrorInfo` (`grpc_edge`), and writes one line per call. Wrapped
around each method handler once, as services register, instead of running as a grpc.aio
interceptor (which runs a coroutine on every call just to pick the handler)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from svc_common import edge_log
from svc_common.edge_log import end_call, log_unhandled
from svc_common.errors import CALLER_DEADLINE, ServiceError
from svc_common.grpc_edge import (
    Parse,
    begin_call,
    internal_status,
    is_quiet,
    parse_request,
    status_for,
    wrap_handler,
)


class AioEdge:
    """The edge of every service, `domain` naming it in every ErrorInfo ("operator.uid2").

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
                end_call(start, *_cancelled_as(context))
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
        edge_log.mark_streaming(method)

        async def call(raw: bytes, context: Any) -> AsyncIterator[Any]:
            start = begin_call(method, context.invocation_metadata())
            try:
                async for item in behavior(parse_request(parse, raw), context):
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                end_call(start, *_cancelled_as(context))
                raise
            except grpc.aio.AbortError:
                end_call(start, _code_name(context), "")
                raise
            except Exception as exc:
                await self._abort(context, start, exc)
            end_call(start, "OK", "")

        return call


def _cancelled_as(context: Any) -> tuple[str, str]:
    """What a call the server cancelled is logged as: grpc.aio cancels a handler at its caller's
    deadline as it does when the caller cancels, and only the deadline tells them apart (the
    sync server let the handler finish and logged its own answer, DEADLINE_EXCEEDED
    CALLER_DEADLINE where it gave up on a peer for the caller)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK_S:
        return "DEADLINE_EXCEEDED", CALLER_DEADLINE
    return "CANCELLED", ""


# The deadline's timer may fire a hair before time_remaining() reads 0.
_DEADLINE_SLACK_S = 0.005


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
