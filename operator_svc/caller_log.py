"""The caller on the call's log line, for the gRPC servicer and the HTTP API alike."""

from __future__ import annotations

from operator_svc.domain.state import Client
from svc_common import call_context


def bind_caller(client: Client) -> None:
    """Binds the caller's site once its API key matched: also on a call refused because the
    client is disabled, whose line said no more than CLIENT_DISABLED (on-call review)."""
    call_context.bind(site_id=client.site_id)
