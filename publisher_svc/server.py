"""Builds the publisher server: store, peer clients, domain, servicer, background refresher."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import structlog

from publisher_svc.config import PublisherConfig
from publisher_svc.model import OperatorPeer, SspPeer, StorageMode
from publisher_svc.operator_client import OperatorClient
from publisher_svc.publisher import Publisher
from publisher_svc.refresher import Refresher
from publisher_svc.servicer import PublisherServicer
from publisher_svc.ssp_client import SspClient
from publisher_svc.store import SqliteStore
from svc_common.clock import Clock, Monotonic, SystemClock
from svc_common.grpc_aio import start_adapted_server
from svc_common.grpc_server import Served
from uid2.publisher.v1 import publisher_pb2, publisher_pb2_grpc

_log = structlog.get_logger("server")

# Pool threads beyond one per slot of the operator and SSP call bounds: what calls that ask
# neither peer (a logout, a token not due) are served on when both peers are frozen.
SPARE_THREADS = 8

SERVICE = publisher_pb2.DESCRIPTOR.services_by_name["PublisherService"]
SERVICE_NAME = SERVICE.full_name


@dataclass
class PublisherRuntime:
    """A started publisher: the server, and its domain object and refresher (for tests)."""

    served: Served
    publisher: Publisher
    refresher: Refresher | None


def create_server(config: PublisherConfig) -> tuple[Served, int]:
    """Starts the publisher on `config.listen`; returns the Served handle and the bound port."""
    runtime = start(config)
    return runtime.served, runtime.served.port


def start(
    config: PublisherConfig,
    *,
    clock: Clock | None = None,
    monotonic: Monotonic | None = None,
    operator: OperatorPeer | None = None,
    ssp: SspPeer | None = None,
) -> PublisherRuntime:
    """Like create_server, with the clocks and peer clients injectable (tests, benchmarks).
    `monotonic` times the background refresher's circuit breaker; the system's by default."""
    # If any step fails (the port is taken), what the earlier ones opened (the store, the peer
    # channels) is closed before the error propagates, so a retry finds nothing held open.
    with ExitStack() as opened:
        store = SqliteStore(config.data_dir)
        opened.callback(store.close)
        if operator is None:
            op_client = OperatorClient(
                config.operator_address,
                config.operator_api_key,
                timeout_s=config.operator_timeout_s,
                tls=config.peer_tls,
            )
            opened.callback(op_client.close)
            operator = op_client
        if ssp is None:
            ssp_client = SspClient(
                config.ssp_address,
                config.ssp_api_key,
                timeout_s=config.ssp_timeout_s,
                tls=config.peer_tls,
            )
            opened.callback(ssp_client.close)
            ssp = ssp_client
        publisher = Publisher(
            store=store,
            operator=operator,
            ssp=ssp,
            clock=clock or SystemClock(),
            mode=config.storage_mode,
            on_behalf_of_site_id=config.on_behalf_of_site_id,
            serve_refresh_budget_s=config.serve_refresh_budget_s,
            operator_calls_max=config.operator_calls_max,
            ssp_calls_max=config.ssp_calls_max,
        )
        opened.callback(publisher.close)  # closed first (last in): before the peers and store
        servicer = PublisherServicer(publisher, config.site_id)

        served = start_adapted_server(
            listen=config.listen,
            domain="publisher.uid2",
            servicer=servicer,
            service=SERVICE,
            add_servicer=publisher_pb2_grpc.add_PublisherServiceServicer_to_server,
            # Every method reads or writes the store, and most may call a peer.
            blocking={m.name for m in SERVICE.methods},
            workers=config.operator_calls_max + config.ssp_calls_max + SPARE_THREADS,
            owns=opened,
            tls=config.tls,
        )
    refresher = None
    if config.background_refresh and config.storage_mode is StorageMode.SERVER:
        refresher = Refresher(
            publisher,
            workers=config.refresh_workers,
            poll_interval_s=config.refresh_interval_s,
            monotonic=SystemClock() if monotonic is None else monotonic,
        )
        refresher.start()
        served.on_stop.append(refresher.stop)  # runs first: stops before the store closes
    served.readings = _readings(publisher, refresher)
    served.set_serving(True)
    served.not_serving_once_lost(store.on_lost)
    _log.info(
        "publisher_started",
        site_id=config.site_id,
        storage_mode=config.storage_mode.value,
        on_behalf_of_site_id=config.on_behalf_of_site_id,
        background_refresh=refresher is not None,
    )
    return PublisherRuntime(served, publisher, refresher)


def _readings(publisher: Publisher, refresher: Refresher | None) -> Callable[[], dict[str, float]]:
    if refresher is None:
        return publisher.readings
    return lambda: {**publisher.readings(), **refresher.readings()}
