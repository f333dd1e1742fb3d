"""failure_fields: what a log line may say about a failed call (type, code, reason; never the
message, which may be a peer's text)."""

from __future__ import annotations

import grpc

from svc_common.errors import ErrorKind, ServiceError, failure_fields
from svc_common.grpc_client import RemoteError


def test_a_peers_error_gives_its_code_and_reason_but_not_its_text() -> None:
    err = RemoteError(grpc.StatusCode.PERMISSION_DENIED, "MISSING_ROLE", "secret peer text")
    fields = failure_fields(err)
    assert fields == {"error_type": "RemoteError", "code": "PERMISSION_DENIED",
                      "reason": "MISSING_ROLE"}  # fmt: skip
    assert "secret peer text" not in repr(fields)


def test_an_unavailable_peer_without_reason_gives_the_code_only() -> None:
    err = RemoteError(grpc.StatusCode.UNAVAILABLE, "", "connection refused")
    assert failure_fields(err) == {"error_type": "RemoteError", "code": "UNAVAILABLE"}


def test_other_errors_give_their_type_and_what_they_carry() -> None:
    assert failure_fields(ValueError("user@example.com")) == {"error_type": "ValueError"}
    service = ServiceError(ErrorKind.INVALID_ARGUMENT, "BAD_DII", "user@example.com is bad")
    assert failure_fields(service) == {
        "error_type": "ServiceError",
        "code": "INVALID_ARGUMENT",
        "reason": "BAD_DII",
    }


def test_a_raw_grpc_error_gives_its_code() -> None:
    # Shaped like grpc's call errors, whose code() is a method (grpc.RpcError itself is untyped).
    class _Raw(Exception):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.DEADLINE_EXCEEDED

    # A private class is named by its first public base (grpc's are RpcErrors).
    assert failure_fields(_Raw()) == {"error_type": "Exception", "code": "DEADLINE_EXCEEDED"}


def test_a_peers_reason_that_is_not_a_code_is_not_logged() -> None:
    # ErrorInfo.reason is the peer's text too: only an UPPER_SNAKE_CASE code goes in the log.
    for odd in ("user@example.com", "lower_case", "X" * 65, "TWO WORDS"):
        err = RemoteError(grpc.StatusCode.INVALID_ARGUMENT, odd, "")
        assert failure_fields(err)["reason"] == "UNRECOGNISED"
