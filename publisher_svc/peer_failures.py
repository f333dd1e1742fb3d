"""What a caller hears when the publisher's call to a peer (the operator, the SSP) fails, or
waited for another call of the user's past the caller's deadline: one ServiceError each. A
failure that is the peer's or our configuration's is also a `peer_failed` warning (PeerFailures),
so that it shows at --log-level WARNING, where the per-call lines do not."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from publisher_svc.limits import OPERATOR_BUSY, SSP_BUSY
from publisher_svc.model import CALLER_DEADLINE, PeerError
from svc_common import call_context
from svc_common.clock import Monotonic
from svc_common.errors import (
    CONNECTION_CLOSED,
    TLS_HANDSHAKE_FAILED,
    ErrorKind,
    ServiceError,
    failure_fields,
    unavailable,
)
from svc_common.failure_log import FailureLog

_log = structlog.get_logger("publisher")

_BUSY = frozenset({OPERATOR_BUSY, SSP_BUSY})


def waited_past_deadline() -> ServiceError:
    return ServiceError(
        ErrorKind.DEADLINE_EXCEEDED,
        CALLER_DEADLINE,
        "the call's deadline passed while another call for this user waited on the operator",
    )


_PEER_NAMES = {"OPERATOR": "the UID2 operator", "SSP": "the SSP"}

# Unreachable peers that are most likely up but configured apart from us -> what to check.
_MISCONFIGURED = {
    TLS_HANDSHAKE_FAILED: "the TLS handshake failed (check --peer-ca and the peer's certificate)",
    CONNECTION_CLOSED: (
        "it closed the connection at once (a peer serving TLS does so to a call without TLS: "
        "check --peer-ca; one requiring client certificates, to a call without one it trusts: "
        "check --peer-cert and --peer-key)"
    ),
}


class PeerFailures:
    """The `peer_failed` warnings: a key of the wrong role, an operator or SSP down, otherwise
    show only on the per-call lines, which are info. One FailureLog per peer and reason
    (OPERATOR_REJECTED, SSP_UNAVAILABLE, ...): its first failure at once, then at most one line
    per 30 s with `failures_since_last` and the last one's fields; failures held back are
    written at the peer's next call after the 30 s (`tick`), whatever its outcome. Shared by
    the handlers' threads and the background refresher's: every use holds the lock. A line
    carries the context of the call it is written in (its request id), so `failed` is called
    before peer_failure binds the failure's own fields to that call: a held-back line of
    another reason written then must not take them."""

    def __init__(self, monotonic: Monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, str], FailureLog] = {}

    def failed(self, peer: str, fields: dict[str, str]) -> None:
        now = self._monotonic.monotonic_s()
        key = (peer, fields["reason"])
        with self._lock:
            log = self._logs.get(key)
            if log is None:
                log = self._logs[key] = FailureLog(_log.bind(peer=peer.lower()), "peer_failed")
            log.record(fields, now)
            self._tick(peer, now)

    def tick(self, peer: str) -> None:
        """A call to `peer` answered: writes its failures held back past their interval."""
        now = self._monotonic.monotonic_s()
        with self._lock:
            self._tick(peer, now)

    def _tick(self, peer: str, now: float) -> None:
        for (of, _), log in self._logs.items():
            if of == peer:
                log.tick(now)


def peer_failure(
    err: PeerError,
    peer: str,
    *,
    failures: PeerFailures,
    caller_input: Callable[[PeerError], bool] | None = None,
) -> ServiceError:
    """What the caller hears of a failed call to `peer` ("OPERATOR" or "SSP").

    The caller's deadline passed first: DEADLINE_EXCEEDED CALLER_DEADLINE. Unreachable:
    UNAVAILABLE <peer>_UNAVAILABLE, or <peer>_BUSY when it was not asked (call_bound.py). A
    refusal of input the caller gave us and we passed on unchanged (`caller_input` says
    which): the caller's own mistake, which it can fix, with the peer's code and reason. Any
    other refusal of a well-formed request means our credentials or configuration are wrong:
    FAILED_PRECONDITION <peer>_REJECTED, with the peer's code and reason in the ErrorInfo
    metadata (peerCode, peerReason).

    Only the peer's failures and ours are warned of in `failures` (the caller's deadline and
    input are its own; BUSY is our own shedding, counted in /metrics, the peer not asked),
    with no more than the call's line says of them."""
    name = _PEER_NAMES[peer]
    if err.reason == CALLER_DEADLINE:
        # The caller gave up: logged as what it saw, not as the peer's failure.
        return ServiceError(
            ErrorKind.DEADLINE_EXCEEDED,
            CALLER_DEADLINE,
            f"the call's deadline passed while it waited on {name}",
        )
    if err.unavailable:
        if err.reason in _BUSY:
            return unavailable(
                err.reason, f"{name} is slow: all the calls allowed already wait on it"
            )
        hint = _MISCONFIGURED.get(err.reason)
        if hint is None:
            failures.failed(peer, {"code": "UNAVAILABLE", "reason": f"{peer}_UNAVAILABLE"})
            return unavailable(f"{peer}_UNAVAILABLE", f"{name} cannot be reached")
        # Likely not an outage: the call's line says so (its reason stays the peer's), and
        # the caller hears what to check.
        failures.failed(
            peer,
            {"code": "UNAVAILABLE", "reason": f"{peer}_UNAVAILABLE", "peer_failure": err.reason},
        )
        call_context.bind(peer_failure=err.reason)
        return unavailable(f"{peer}_UNAVAILABLE", f"{name} cannot be reached: {hint}")
    if caller_input is not None and err.reason and caller_input(err):
        return ServiceError(
            ErrorKind(err.code), err.reason, f"{name} refused the input ({err.reason})"
        )
    # Our key or configuration is wrong: the call's line names the peer's answer (a peer's
    # reason only if it has a reason's shape), so that whoever runs us can see which.
    seen = failure_fields(err)
    peer_code, peer_reason = seen.get("code", ""), seen.get("reason", "")
    failures.failed(
        peer,
        {
            "code": "FAILED_PRECONDITION",
            "reason": f"{peer}_REJECTED",
            "peer_code": peer_code,
            "peer_reason": peer_reason,
        },
    )
    call_context.bind(peer_code=peer_code, peer_reason=peer_reason)
    return ServiceError(
        ErrorKind.FAILED_PRECONDITION,
        f"{peer}_REJECTED",
        f"{name} refused the call ({' '.join(filter(None, (err.code, err.reason)))})",
        {"peerCode": err.code, "peerReason": err.reason},
    )


def operator_failure(
    err: PeerError, *, failures: PeerFailures, caller_input: bool = False
) -> ServiceError:
    # With caller_input, the operator judged the privacy settings the caller gave us.
    return peer_failure(
        err,
        "OPERATOR",
        failures=failures,
        caller_input=is_invalid_argument if caller_input else None,
    )


def is_invalid_argument(err: PeerError) -> bool:
    return err.code == "INVALID_ARGUMENT"


def ssp_input_refused(err: PeerError) -> bool:
    """The SSP judged the impression the caller described (its floor, its fields, a page
    domain or app that is not the publisher's), not our key or account."""
    return err.code == "INVALID_ARGUMENT" or (
        err.code == "PERMISSION_DENIED" and err.reason == "INVENTORY_NOT_ALLOWED"
    )
