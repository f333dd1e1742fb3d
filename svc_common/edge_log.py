"""What every front door (gRPC sync, gRPC aio, HTTP) logs the same way: one line per call with its
request id, and a bug logged by type and place only (exception text may carry request data)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import structlog

from svc_common import call_context
from svc_common.logging import where, write_call_line

_log = structlog.get_logger("rpc")


# A caller's request id is logged as it came, so it must not be able to carry what the logs
# never hold: no '@' (an email), '+', '/' or '=' (a phone number, a base64 hash), no spaces.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# A phone number without its '+', however grouped (555-123-4567, 44.20.7946.0958), or another
# numeric identifier: digits and separators only.
_DIGITS = re.compile(r"[._:-]*[0-9][0-9._:-]*")  # a leading separator hides no less
# A phone number inside an id ("tel:12065557781", "ph-12065557781"): 9 digits or more in a row
# (a national number has that many in most countries; a date, 8, is kept).
_PHONE_RUN = re.compile(r"[0-9]{9,}")
# Machine ids made of hex, where such a run of digits is chance: a UUID, a span id, a Mongo
# ObjectId, a trace id.
_HEX_ID = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|[0-9A-Fa-f]{16}|[0-9A-Fa-f]{24}|[0-9A-Fa-f]{32}"
)
# A hash of DII in hex, whole or cut short: 40 hex digits or more in a row (a SHA-1's length;
# trace ids have 32).
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{40,}")
# A SHA-256 in unpadded base64url (43 characters): has '-' or '_' where base64 has '+' '/'.
_B64URL_SHA256 = re.compile(r"[A-Za-z0-9_-]{43}")
# An API key of ours, whole or in part (the operator's UID2-C-/EUID-C-, the SSP's UID2-SSP-).
_OUR_KEY = re.compile(r"(?i)(UID2|EUID)-(C|SSP)-")
# Another random secret, a token or a piece of one: 20 letters and digits or more in one run,
# mixing upper case, lower case and digits. Ids people and libraries make (UUIDs, hex trace
# ids, ULIDs, Nano IDs, hand-made ids joined by '-' or '_') have no such run, except base62
# ids that are the whole id: a KSUID (27 characters) or a base62 UUID (22).
_SECRET_RUN = re.compile(r"[A-Za-z0-9]{20,}")
_BASE62_ID_LENGTHS = (22, 27)


def _secret_like(text: str) -> bool:
    if _OUR_KEY.search(text) is not None:
        return True
    for run in _SECRET_RUN.findall(text):
        if run == text and len(run) in _BASE62_ID_LENGTHS:
            continue
        if re.search(r"[a-z]", run) and re.search(r"[A-Z]", run) and re.search(r"[0-9]", run):
            return True
    return False


def loggable_id(candidate: str | None) -> bool:
    """Whether an id a caller chose (a request id, an auction id) may be logged as it came: it
    has the shape of an id, not of DII, a hash of it, a key or a token (UUIDs, trace ids,
    "req-123" pass). A caller who encodes such data on purpose can still get it past; what this
    stops is the id a client builds from what it has at hand."""
    return bool(
        candidate
        and _CALLER_ID.fullmatch(candidate)
        and not _DIGITS.fullmatch(candidate)
        and not (_PHONE_RUN.search(candidate) and not _HEX_ID.fullmatch(candidate))
        and not _HEX_RUN.search(candidate)
        and not _B64URL_SHA256.fullmatch(candidate)
        and not _secret_like(candidate)
    )


def request_id(candidate: str | None) -> str:
    """The caller's request id (x-request-id) when `loggable_id`, else a new one."""
    if candidate is not None and loggable_id(candidate):
        return candidate
    return os.urandom(8).hex()


def begin_call(method: str, rid: str) -> float:
    """Starts the call's log context (request id, method); returns its start time."""
    call_context.begin(request_id=rid, method=method)
    return time.perf_counter()


# Set by svc_common.metrics while a process serves /metrics: (method, code, seconds) per call;
# seconds None for a server stream, whose length is its reader's, not a latency.
CallObserver = Callable[[str, str, float | None], None]
_observer: CallObserver | None = None
_streaming: set[str] = set()


def mark_streaming(method: str) -> None:
    """`method` answers with a stream (the edges say so as they wrap its handler)."""
    _streaming.add(method)


def observe_calls(observer: CallObserver | None) -> None:
    global _observer
    _observer = observer


def observe(method: str, code: str, seconds: float) -> None:
    """Counts a call answered outside the gRPC edge (the HTTP API), when metrics are on."""
    if _observer is not None:
        _observer(method, code, seconds)


def end_call(start: float, code: str, reason: str) -> None:
    """Ends the call's context and writes its one log line."""
    seconds = time.perf_counter() - start
    latency_ms = round(seconds * 1000, 3)
    fields = call_context.end()
    if _observer is not None:
        method = str(fields.get("method", ""))
        _observer(method, code, None if method in _streaming else seconds)
    fields["code"] = code
    if reason:
        fields["reason"] = reason
    fields["latency_ms"] = latency_ms
    try:  # noqa: SIM105  # not contextlib.suppress: an object per call on this hot path
        write_call_line(fields)
    except (OSError, ValueError):
        pass  # a broken log stream must not turn an answered call into an error


def log_unhandled(exc: BaseException) -> None:
    _log.error("unhandled_exception", error_type=type(exc).__name__, where=where(exc))
