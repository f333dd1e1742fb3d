"""A gRPC server with nothing but the health service (and reflection), on the suite's server
stack: what a test of the transport itself (connections, reconnects) needs to talk to."""

from __future__ import annotations

from svc_common.grpc_aio import start_aio_server
from svc_common.grpc_server import Served
from svc_common.tls import ServerTls


def health_only_server(listen: str = "127.0.0.1:0", tls: ServerTls | None = None) -> Served:
    """Started and SERVING (TLS only with `tls`); the caller stops it."""
    served = start_aio_server(
        listen=listen,
        domain="test.uid2",
        register=lambda _server: None,
        service_names=[],
        served_class=Served,
        tls=tls,
    )
    served.set_serving(True)
    return served
