"""ServiceError kinds -> the official operator's HTTP codes and status strings."""

from __future__ import annotations

import pytest

from operator_svc.http.errors import from_service_error
from svc_common.errors import ErrorKind, ServiceError


@pytest.mark.parametrize(
    ("kind", "http_status", "status"),
    [
        (ErrorKind.INVALID_ARGUMENT, 400, "client_error"),
        (ErrorKind.FAILED_PRECONDITION, 400, "client_error"),
        (ErrorKind.UNAUTHENTICATED, 401, "unauthorized"),
        (ErrorKind.PERMISSION_DENIED, 401, "unauthorized"),
        (ErrorKind.UNAVAILABLE, 503, "error"),
    ],
)
def test_mapping(kind: ErrorKind, http_status: int, status: str) -> None:
    err = from_service_error(ServiceError(kind, "SOME_REASON", "what to fix"))
    assert (err.http_status, err.status, err.reason) == (http_status, status, "SOME_REASON")
    assert err.body() == {"status": status, "message": "what to fix"}


def test_every_kind_is_mapped_below_500_unless_the_operator_is_at_fault() -> None:
    for kind in ErrorKind:
        err = from_service_error(ServiceError(kind, "R", "m"))
        assert err.http_status < 500 or kind in (ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED)
