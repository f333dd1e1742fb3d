"""A method no service here has (a typo, a newer client, another package's path): UNIMPLEMENTED
with a `google.rpc.ErrorInfo` (reason UNKNOWN_METHOD), as the contract asks of every error,
instead of grpc's bare "Method not found!"; and its one log line, with the method not named
(any path a caller makes up would otherwise reach the logs and the metrics' labels).

Registered last on a server, as a generic handler: grpc asks it only when no service knows the
method. A stream-stream handler answers a call of any kind: it is refused before a message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2

from svc_common import edge_log
from svc_common.grpc_edge import begin_call, error_status

UNKNOWN_METHOD = "UNKNOWN_METHOD"
# What the log line and the metrics name the method.
_UNNAMED = "<unknown>"


class UnknownMethods(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """For a grpc.aio server."""

    def __init__(self, domain: str) -> None:
        self._status = error_status(
            code_pb2.UNIMPLEMENTED,
            UNKNOWN_METHOD,
            "no such method on this service: see its protos",
            domain,
        )
        self.handler = grpc.stream_stream_rpc_method_handler(self._refuse)

    def service(self, handler_call_details: Any) -> Any:
        return self.handler

    def _logged(self, context: Any) -> None:
        edge_log.end_call(
            begin_call(_UNNAMED, context.invocation_metadata()), "UNIMPLEMENTED", UNKNOWN_METHOD
        )

    async def _refuse(self, _requests: AsyncIterator[bytes], context: Any) -> NoReturn:
        self._logged(context)
        await context.abort_with_status(self._status)
        raise AssertionError("abort_with_status raises")  # pragma: no cover - it raises
