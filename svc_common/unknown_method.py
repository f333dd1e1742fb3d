"""A method no service here has (a typo, a newer client, another package's path): UNIMPLEMENTED
with a `google.rpc.ErrorInfo` (reason UNKNOWN_METHOD), as the contract asks of every error,
instead of grpc's bare "Method not found!"; and its one log line, with the method not named
(any path a caller makes up would otherwise reach the logs and the metrics' labels).

Registered last on a server, as a generic handler: grpc asks it only when no service knows the
method. A stream-stream handler answers a call of any kind: it is refused before a message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from svc_common import edge_log
from svc_common.grpc_edge import begin_call

UNKNOWN_METHOD = "UNKNOWN_METHOD"
# What the log line and the metrics name the method.
_UNNAMED = "<unknown>"


def unknown_method_status(domain: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=UNKNOWN_METHOD, domain=domain)
    status = status_pb2.Status(
        code=code_pb2.UNIMPLEMENTED, message="no such method on this service: see its protos"
    )
    status.details.add().Pack(info)
    return rpc_status.to_status(status)


class UnknownMethods(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """For the thread-pool server (`grpc.server`)."""

    def __init__(self, domain: str) -> None:
        self._status = unknown_method_status(domain)
        self.handler = grpc.stream_stream_rpc_method_handler(self._refuse)

    def service(self, handler_call_details: Any) -> Any:
        return self.handler

    def _refuse(self, _requests: Iterator[bytes], context: Any) -> NoReturn:
        start = begin_call(_UNNAMED, context.invocation_metadata())
        edge_log.end_call(start, "UNIMPLEMENTED", UNKNOWN_METHOD)
        context.abort_with_status(self._status)
        raise AssertionError("abort_with_status raises")  # pragma: no cover


class AioUnknownMethods(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """For grpc.aio servers."""

    def __init__(self, domain: str) -> None:
        self._status = unknown_method_status(domain)
        self.handler = grpc.stream_stream_rpc_method_handler(self._refuse)

    def service(self, handler_call_details: Any) -> Any:
        return self.handler

    async def _refuse(self, _requests: AsyncIterator[bytes], context: Any) -> NoReturn:
        start = begin_call(_UNNAMED, context.invocation_metadata())
        edge_log.end_call(start, "UNIMPLEMENTED", UNKNOWN_METHOD)
        await context.abort_with_status(self._status)
        raise AssertionError("abort_with_status raises")  # pragma: no cover
