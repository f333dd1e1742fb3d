"""The one error type domain code raises. It knows nothing of gRPC: the edge interceptor maps
`kind` to a status code and `reason` to a `google.rpc.ErrorInfo`."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any


class ErrorKind(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


class ServiceError(Exception):
    """A failure the caller can act on. `message` must never carry DII, hashes, tokens or keys:
    it is sent to the caller and logged."""

    def __init__(
        self,
        kind: ErrorKind,
        reason: str,
        message: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.reason, self.message, self.metadata))


def invalid_argument(reason: str, message: str) -> ServiceError:
    return ServiceError(ErrorKind.INVALID_ARGUMENT, reason, message)


def unauthenticated(reason: str, message: str) -> ServiceError:
    return ServiceError(ErrorKind.UNAUTHENTICATED, reason, message)


def permission_denied(reason: str, message: str) -> ServiceError:
    return ServiceError(ErrorKind.PERMISSION_DENIED, reason, message)


def resource_exhausted(reason: str, message: str) -> ServiceError:
    return ServiceError(ErrorKind.RESOURCE_EXHAUSTED, reason, message)


def unavailable(reason: str, message: str) -> ServiceError:
    return ServiceError(ErrorKind.UNAVAILABLE, reason, message)


# ErrorInfo reasons are UPPER_SNAKE_CASE codes; a peer's is logged only if it looks like one.
_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


# The reason of a peer call that failed in its TLS handshake (a CA that did not sign the peer's
# certificate, an expired one): told apart from an outage, a misconfiguration can be found from
# the logs.
TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"
# The reason of a peer call whose connection the peer closed at once ("Socket closed"): what a
# TLS server does to a call made without TLS (no --peer-ca), or one requiring client
# certificates to a call without one it trusts, where an outage says "Connection refused" (a
# peer killed mid-call closes it too). Told apart, so that the logs and the caller can name the
# likely fix.
CONNECTION_CLOSED = "CONNECTION_CLOSED"
# The reason of a call cut short because its caller's deadline passed: logged by the edge for a
# call the server ended at the deadline, and by a service for a peer call it made with it.
CALLER_DEADLINE = "CALLER_DEADLINE"


def _public_type_name(exc: BaseException) -> str:
    """The name of the exception's first public class: a library's private class says nothing
    to whoever reads the log (grpc's _MultiThreadedRendezvous is an RpcError)."""
    return next(
        (cls.__name__ for cls in type(exc).__mro__ if not cls.__name__.startswith("_")),
        type(exc).__name__,
    )


def failure_fields(exc: BaseException) -> dict[str, str]:
    """What to log about a failure: the exception's type and, when it carries them (a peer's
    RemoteError, a raw grpc.RpcError, a ServiceError), its status code and reason. Never its
    message, which may be a peer's text, and a peer's reason only if it has the shape of one.
    Duck-typed so that code knowing nothing of gRPC can log a gRPC failure."""
    fields = {"error_type": _public_type_name(exc)}
    code: Any = exc.kind if isinstance(exc, ServiceError) else getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError.code() is a method
        try:
            code = code()
        except Exception:  # a failure object that cannot say; the type is logged all the same
            code = None
    name = code if isinstance(code, str) else getattr(code, "name", None)
    if isinstance(name, str) and name:
        fields["code"] = name
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        fields["reason"] = reason if _REASON.fullmatch(reason) else "UNRECOGNISED"
    return fields
