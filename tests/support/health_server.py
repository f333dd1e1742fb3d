"""A gRPC server with nothing but the health service (and reflection), on the suite's server
stack: what a test of the transport itself (connections, reconnects) needs to talk to."""

from __future__ import annotations

from svc_common.grpc_aio import AioServed, start_aio_server


def health_only_server(listen: str = "127.0.0.1:0") -> AioServed:
    """Started and SERVING; the caller stops it."""
    served = start_aio_server(
        listen=listen,
        domain="test.uid2",
        register=lambda _server: None,
        service_names=[],
        served_class=AioServed,
    )
    served.set_serving(True)
    return served
