"""Client-side helpers for calls between services: one typed error, and retries with capped,
jittered exponential backoff on UNAVAILABLE."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from svc_common import call_context
from svc_common.backoff import Backoff
from svc_common.errors import CONNECTION_CLOSED, TLS_HANDSHAKE_FAILED

T = TypeVar("T")


class RemoteError(Exception):
    """A peer answered with an error status. `reason` is its ErrorInfo reason, if any."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    @property
    def retriable(self) -> bool:
        return bool(self.code == grpc.StatusCode.UNAVAILABLE)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The `google.rpc.ErrorInfo` detail of a failed call, if it carries one. The peer's bytes:
    a details trailer that does not parse (DecodeError, not a ValueError) is none at all. It
    escaped before, and one bidder sending such a trailer failed every auction (diff review)."""
    try:
        status = rpc_status.from_call(err)
        if status is None:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    except (ValueError, DecodeError):
        return None
    return None


# gRPC says a call failed in its TLS handshake only in its details (errors.TLS_HANDSHAKE_FAILED).
# A certificate that does not name the host dialled: "Hostname Verification Check failed".
_TLS_FAILURE = re.compile(r"(?i)handshake|certificate|ssl|verification")


def to_remote_error(err: grpc.RpcError) -> RemoteError:
    info = error_info(err)
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or ""
    reason = info.reason if info else ""
    if not reason and code == grpc.StatusCode.UNAVAILABLE:
        if _TLS_FAILURE.search(details):
            reason = TLS_HANDSHAKE_FAILED
        elif "Socket closed" in details:
            reason = CONNECTION_CLOSED
    return RemoteError(code, reason, details)


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


class CallerDeadlineExceeded(RemoteError):
    """The call was cut short, or not retried, because the deadline its caller gave
    (call_with_retry's `deadline`) passed, not because the peer's own deadline did."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, "", "the caller's deadline passed")


def call_with_retry(
    call: Callable[..., T],
    request: Any,
    *,
    timeout_s: float,
    metadata: Any = None,
    attempts: int = 4,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    """Calls `call(request)`; retries UNAVAILABLE up to `attempts` times; raises RemoteError.

    `deadline` (on `monotonic`'s clock): the caller's, past which nobody waits for the answer.
    Each attempt then gets the smaller of `timeout_s` and the time left, and no attempt starts
    (nor a retry's back-off) once too little is left: CallerDeadlineExceeded."""
    backoff = backoff or Backoff()
    rid = call_context.request_id()
    if rid is not None:
        # The call being served's id, on to the peer (which keeps it, being shaped like an id).
        metadata = (*(metadata or ()), ("x-request-id", rid))
    for attempt in range(attempts):
        timeout, cut = timeout_s, False
        if deadline is not None:
            left = deadline - monotonic()
            if left <= 0:
                raise CallerDeadlineExceeded()
            timeout, cut = min(timeout_s, left), left < timeout_s
        try:
            return call(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            remote = to_remote_error(err)
            if cut and remote.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CallerDeadlineExceeded() from None
            if not remote.retriable or attempt == attempts - 1:
                raise remote from None
            delay = backoff.delay(attempt)
            if deadline is not None and monotonic() + delay >= deadline:
                # No time for another try: the peer's failure is the answer, not the deadline
                # (a caller with 80 ms left was told its deadline passed, the operator down).
                raise remote from None
            sleep(delay)
    raise AssertionError("unreachable")
