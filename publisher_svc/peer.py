"""What the publisher's clients of its peers (operator, SSP) share: one channel that reconnects
quickly, the bearer key, the deadline and retry policy, and one typed error (PeerError)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from publisher_svc.caller_deadline import caller_deadline_error, callers_deadline_at
from publisher_svc.model import PeerError
from svc_common.backoff import Backoff
from svc_common.grpc_client import (
    CallerDeadlineExceeded,
    RemoteError,
    bearer,
    call_with_retry,
)
from svc_common.tls import PeerTls
from svc_common.tls_reload import open_channel

T = TypeVar("T")

# Our own retry policy (call_with_retry), not gRPC's. (Reconnecting quickly once a peer is back
# is every channel's: tls_reload.RECONNECT_OPTIONS.)
CHANNEL_OPTIONS = (("grpc.enable_retries", 0),)

_UNAVAILABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def peer_error(peer: str, err: RemoteError) -> PeerError:
    return PeerError(peer, err.code.name, err.reason, unavailable=err.code in _UNAVAILABLE_CODES)


class PeerClient:
    """Base of one peer's typed client. Subclasses name the peer (in errors), its stub class and
    how many attempts a call gets by default."""

    peer = "peer"
    stub_class: Callable[[grpc.Channel], Any]
    default_attempts = 3

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        timeout_s: float = 2.0,
        attempts: int | None = None,
        backoff: Backoff | None = None,
        channel: grpc.Channel | None = None,
        tls: PeerTls | None = None,
    ) -> None:
        self._channel = channel or open_channel(address, tls, CHANNEL_OPTIONS)
        self._stub = type(self).stub_class(self._channel)
        self._metadata = bearer(api_key)
        self._timeout_s = timeout_s
        self._attempts = attempts if attempts is not None else self.default_attempts
        self._backoff = backoff or Backoff(base_s=0.05, cap_s=0.5)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any, *, with_key: bool = True) -> T:
        """Calls with the deadline (this client's timeout, or the caller's if that comes first)
        and retries; any failure becomes a PeerError (CALLER_DEADLINE: the caller's passed)."""
        try:
            return call_with_retry(
                method,
                request,
                timeout_s=self._timeout_s,
                metadata=self._metadata if with_key else None,
                attempts=self._attempts,
                backoff=self._backoff,
                deadline=callers_deadline_at(),
            )
        except CallerDeadlineExceeded:
            raise caller_deadline_error(self.peer) from None
        except RemoteError as err:
            raise peer_error(self.peer, err) from None
