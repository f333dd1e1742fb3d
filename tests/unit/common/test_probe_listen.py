"""`probe_listen` finds why an address cannot be bound before grpc tries (grpc core would log
its own lines to stderr first), and stays out of the way when it can."""

from __future__ import annotations

import socket
from concurrent import futures

import grpc
import pytest

from svc_common.grpc_server import bind_port, probe_listen


def test_a_taken_port_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}: Address already in use"):
            probe_listen(f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("nonexistent.invalid:0", "'nonexistent.invalid' does not resolve"),
        ("10.255.255.1:5000", "Cannot assign requested address"),
        ("127.0.0.1:x", "not HOST:PORT"),
    ],
)
def test_an_address_that_cannot_be_bound(listen: str, problem: str) -> None:
    with pytest.raises(OSError, match=problem):
        probe_listen(listen)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:0", "0.0.0.0:0"])
def test_bindable_addresses_pass(listen: str) -> None:
    probe_listen(listen)


def test_a_closed_port_still_in_time_wait_passes_as_grpc_would_bind_it() -> None:
    # grpc binds with SO_REUSEADDR; a probe without it would refuse a port a client just left.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    probe_listen(f"127.0.0.1:{port}")


def test_bind_port_binds_what_the_settings_accept_with_spaces_around() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        assert bind_port(server, " 127.0.0.1:0 ") > 0
    finally:
        server.stop(None)
