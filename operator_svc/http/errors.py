"""HTTP API errors: the official operator's status strings and HTTP codes.

An error answer is never encrypted: `{"status": ..., "message": ...}` as JSON, with a message
that tells the caller what to fix and never carries DII, tokens, keys or secrets."""

from __future__ import annotations

from svc_common.errors import ErrorKind, ServiceError

SUCCESS = "success"
OPTOUT = "optout"
CLIENT_ERROR = "client_error"
UNAUTHORIZED = "unauthorized"
INVALID_TOKEN = "invalid_token"  # noqa: S105 - a status name
EXPIRED_TOKEN = "expired_token"  # noqa: S105 - a status name
INSUFFICIENT_USER_CONSENT = "insufficient_user_consent"
ERROR = "error"
# Client-side generation refused for where the request came from (HTTP 403).
INVALID_HTTP_ORIGIN = "invalid_http_origin"
INVALID_APP_NAME = "invalid_app_name"

# ServiceError kind -> (HTTP code, status string). A role the key lacks is 401 unauthorized,
# as the official operator answers.
_KINDS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_ARGUMENT: (400, CLIENT_ERROR),
    ErrorKind.FAILED_PRECONDITION: (400, CLIENT_ERROR),
    ErrorKind.ALREADY_EXISTS: (400, CLIENT_ERROR),
    ErrorKind.NOT_FOUND: (404, CLIENT_ERROR),
    ErrorKind.RESOURCE_EXHAUSTED: (429, CLIENT_ERROR),
    ErrorKind.UNAUTHENTICATED: (401, UNAUTHORIZED),
    ErrorKind.PERMISSION_DENIED: (401, UNAUTHORIZED),
    ErrorKind.UNAVAILABLE: (503, ERROR),
    ErrorKind.DEADLINE_EXCEEDED: (503, ERROR),
}


# The reason of a 408: the body did not arrive in time (the connection is then closed).
BODY_TIMEOUT = "BODY_TIMEOUT"
# The reason of a 503: too many bodies held at once already (the connection is then closed).
BODIES_BUSY = "BODIES_BUSY"
MALFORMED_BODY = "MALFORMED_BODY"  # a body its Content-Encoding does not decode


class HttpError(Exception):
    """An answer other than success: HTTP code, status string, message for the caller."""

    def __init__(self, http_status: int, status: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.message = message
        # UPPER_SNAKE, for the log line.
        self.reason = reason

    def body(self) -> dict[str, str]:
        return {"status": self.status, "message": self.message}


def client_error(reason: str, message: str) -> HttpError:
    return HttpError(400, CLIENT_ERROR, message, reason)


def from_service_error(error: ServiceError) -> HttpError:
    http_status, status = _KINDS.get(error.kind, (400, CLIENT_ERROR))
    return HttpError(http_status, status, error.message, error.reason)
