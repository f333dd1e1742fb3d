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
from svc_common.sensitive import B64URL_RUN, may_be_sensitive, mixes_all_three

_log = structlog.get_logger("rpc")


# A caller's request id is logged as it came, so it must not be able to carry what the logs
# never hold: no '@' (an email), '+', '/' or '=' (a phone number, a base64 hash), no spaces.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# A phone number without its '+', however grouped (555-123-4567, 44.20.7946.0958), or another
# numeric identifier: digits and separators only.
_DIGITS = re.compile(r"[._:-]*[0-9][0-9._:-]*")  # a leading separator hides no less
# A piece of a token or key, whose '-' and '_' cut its letters and digits into short runs: 29
# or more base64url characters, one of whose segments between '-' and '_' mixes upper case,
# lower case and digits (ids people or libraries make are shorter, or have no such segment:
# "req_01ARZ3NDEKTSV4RRFFQ69G5FAV", "Req-4bf92f35...", "Checkout-Service-Order-12345"; a Nano
# ID has 21 or 28 characters, a KSUID 27). About 1 in 800 40-character pieces of a token get
# through, 1 in 170 32-character ones (4-43% did before the rule).
_PIECE_RUN = re.compile(r"[A-Za-z0-9_-]{29,}")
_SEGMENT = re.compile(r"[^_-]+")


def loggable_id(candidate: str | None) -> bool:
    """Whether an id a caller chose (a request id, an auction id) may be logged as it came: it
    has the shape of an id, not of DII, a hash of it, a key or a token (UUIDs, trace ids,
    "req-123" pass; see svc_common.sensitive)."""
    return bool(
        candidate
        and _CALLER_ID.fullmatch(candidate)
        and not _DIGITS.fullmatch(candidate)
        and not may_be_sensitive(candidate)
        and not any(_cases_mixed(run) for run in B64URL_RUN.findall(candidate))
        and not any(_token_piece(run) for run in _PIECE_RUN.findall(candidate))
    )


def _token_piece(run: str) -> bool:
    return any(mixes_all_three(segment) for segment in _SEGMENT.findall(run))


def _cases_mixed(run: str) -> bool:
    # Harder than may_be_sensitive, which names pass through too: an id needs no 43-character
    # run of both cases, and a SHA-256 in base64url lacks a digit 1 time in 1,500.
    return any(c.islower() for c in run) and any(c.isupper() for c in run)


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
