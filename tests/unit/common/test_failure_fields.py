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
    assert failure_fields(service) == {"error_type": "ServiceError", "reason": "BAD_DII"}
