"""What the server edge (`aio_edge.AioEdge`) is made of: domain errors as gRPC statuses with a
`google.rpc.ErrorInfo`, handlers wrapped to parse their own requests, and a call's log context.

Nothing a client sends may surface as UNKNOWN: a `ServiceError` becomes its status; anything
else is a bug, logged by type and place only (exception text may carry request data) and
answered INTERNAL with reason INTERNAL. Requests are parsed by the edge, not by grpc (which
answers bytes that are not the message with INTERNAL or UNKNOWN and no log line): a malformed
one is INVALID_ARGUMENT, reason MALFORMED_REQUEST, like any other bad input."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from svc_common import edge_log
from svc_common.bearer import bearer_key
from svc_common.errors import ErrorKind, ServiceError, invalid_argument, resource_exhausted

# The largest request a service accepts (5,000 DIIs fit). The transport lets through up to
# TRANSPORT_MAX_BYTES so that the edge, not gRPC core, refuses what lies in between: core's own
# refusal carries no google.rpc.ErrorInfo, which the contract requires on every error. Only a
# little more: each call in flight holds what the transport let through, and at 16 MiB, 120
# calls at once with no API key took an operator from 1.3 to 2.1 GB, kept after they ended.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
TRANSPORT_MAX_BYTES = MAX_MESSAGE_BYTES + 2 * 1024 * 1024

_CODES: dict[ErrorKind, int] = {
    ErrorKind.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    ErrorKind.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    ErrorKind.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorKind.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    ErrorKind.UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
}

# Infrastructure services answer often and carry nothing worth a line each.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def error_status(
    code: int, reason: str, message: str, domain: str, metadata: Mapping[str, str] | None = None
) -> grpc.Status:
    """A status of `code` (google.rpc.Code) carrying an ErrorInfo, as every error must."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(info)
    return rpc_status.to_status(status)


def status_for(error: ServiceError, domain: str) -> grpc.Status:
    return error_status(_CODES[error.kind], error.reason, error.message, domain, error.metadata)


def internal_status(domain: str) -> grpc.Status:
    return error_status(code_pb2.INTERNAL, "INTERNAL", "internal error", domain)


Parse = Callable[[bytes], Any]
Wrap = Callable[[Any, Parse], Any]


def wrap_handler(handler: Any, unary: Wrap, stream: Wrap) -> Any:
    """`handler` with its behaviour wrapped by `unary` or `stream` (other kinds unchanged).
    The wrapped behaviour gets the request's bytes and the handler's parser (`parse_request`)."""
    parse = handler.request_deserializer or _as_is
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary, parse),
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream, parse),
            response_serializer=handler.response_serializer,
        )
    return handler


def parse_request(parse: Parse, raw: bytes) -> Any:
    """The request message from the bytes the client sent. Any failure is the client's
    malformed input (DecodeError, invalid UTF-8 in a string field, ...), never a server fault."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise resource_exhausted(
            "REQUEST_TOO_LARGE", f"requests are at most {MAX_MESSAGE_BYTES} bytes; send fewer items"
        )
    try:
        return parse(raw)
    except Exception:
        raise invalid_argument(
            "MALFORMED_REQUEST", "the request is not a well-formed message of this method"
        ) from None


def _as_is(raw: bytes) -> bytes:
    return raw


def begin_call(method: str, metadata: Any) -> float:
    """Binds the call's log context (request id from `x-request-id`, method)."""
    rid = edge_log.request_id(_metadata_value(metadata, "x-request-id"))
    return edge_log.begin_call(method, rid)


def is_quiet(method: str) -> bool:
    """Health checks and reflection: not worth a log line each."""
    return method.startswith(_QUIET_PREFIXES)


def _metadata_value(metadata: Any, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name and isinstance(value, str):
            return value
    return None


def bearer_token(context: Any) -> str | None:
    """The API key from `authorization: Bearer <key>`, or None (bearer.bearer_key)."""
    return bearer_key(
        value
        for key, value in context.invocation_metadata() or ()
        if key == "authorization" and isinstance(value, str)
    )
