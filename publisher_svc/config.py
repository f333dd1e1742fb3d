"""The publisher's configuration, parsed once at the edge (cli.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from publisher_svc.limits import (
    DEFAULT_OPERATOR_CALLS_MAX,
    DEFAULT_SERVE_REFRESH_BUDGET_S,
    DEFAULT_SSP_CALLS_MAX,
)
from publisher_svc.model import StorageMode
from svc_common.tls import PeerTls, ServerTls


@dataclass(frozen=True)
class PublisherConfig:
    listen: str
    data_dir: str
    operator_address: str
    # The GENERATOR key: this publisher's own, or an SSO / identity provider's key when
    # on_behalf_of_site_id is set. Never logged (repr=False).
    operator_api_key: str = field(repr=False)
    site_id: int
    ssp_address: str
    ssp_api_key: str = field(repr=False)
    storage_mode: StorageMode = StorageMode.SERVER
    # SSO / identity-provider mode: the publisher site the provider's key generates for.
    on_behalf_of_site_id: int = 0
    refresh_workers: int = 8
    refresh_interval_s: float = 1.0
    background_refresh: bool = True
    operator_timeout_s: float = 2.0
    ssp_timeout_s: float = 2.0
    # Callers' calls waiting on each peer at once, at most (publisher.py); the server gets a
    # thread for each and some to spare.
    operator_calls_max: int = DEFAULT_OPERATOR_CALLS_MAX
    ssp_calls_max: int = DEFAULT_SSP_CALLS_MAX
    # How long ServeAd waits for the refresh of an expired token before serving without one.
    serve_refresh_budget_s: float = DEFAULT_SERVE_REFRESH_BUDGET_S
    log_level: str = "INFO"
    # TLS: what this service serves with, and the CAs it trusts for the servers it calls
    # (svc_common.tls); None = plaintext.
    tls: ServerTls | None = None
    peer_tls: PeerTls | None = None
