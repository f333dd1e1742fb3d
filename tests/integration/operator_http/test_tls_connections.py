"""The HTTP API's connection cap and deadlines over TLS, where the handshake is a phase of its
own: a connection whose handshake fails (a port scan, plain HTTP, a client refusing the
certificate) stops counting at once, a silent one is closed at the idle deadline, and past the
cap a connection is closed before any handshake. (Deadline and cap shortened here.)"""

from __future__ import annotations

import asyncio.sslproto
import contextlib
import gc
import http.client
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from operator_svc.config import OperatorConfig
from operator_svc.http import app as http_app
from operator_svc.server import create_server
from svc_common.tls import load_server_tls
from tests.integration.operator.conftest import init_dir
from tests.support.tls_certs import TlsFiles, make_tls_files

CAP = 5


@pytest.fixture
def tls_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, TlsFiles]]:
    monkeypatch.setattr(http_app, "IDLE_DEADLINE_S", 1.0)
    monkeypatch.setattr(http_app, "MAX_TLS_CONNECTIONS", CAP)
    files = make_tls_files(tmp_path / "tls")
    init_dir(tmp_path / "op")
    config = OperatorConfig(
        data_dir=tmp_path / "op",
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        tls=load_server_tls(str(files.cert), str(files.key)),
    )
    served, _ = create_server(config)
    try:
        assert served.http_port is not None
        yield served, files
    finally:
        served.stop(0)


@pytest.fixture
def tls_port(tls_served: tuple[Any, TlsFiles]) -> tuple[int, TlsFiles]:
    served, files = tls_served
    return int(served.http_port), files


def _healthy(port: int, files: TlsFiles) -> bool:
    context = ssl.create_default_context(cafile=str(files.ca))
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
    try:
        conn.request("GET", "/ops/healthcheck")
        return conn.getresponse().read() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _gone(conn: socket.socket, timeout_s: float = 10.0) -> bool:
    conn.settimeout(timeout_s)
    try:
        while conn.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_failed_handshakes_stop_counting_at_once(tls_port: tuple[int, TlsFiles]) -> None:
    port, files = tls_port
    assert _healthy(port, files)
    for _ in range(3 * CAP):
        socket.create_connection(("127.0.0.1", port)).close()  # a port scan, a health probe
        with socket.create_connection(("127.0.0.1", port)) as plain:  # HTTP to the TLS port
            plain.sendall(b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
            _gone(plain)
        refusing = ssl.create_default_context()  # does not trust our CA: refuses the handshake
        with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLError):
            refusing.wrap_socket(raw, server_hostname="localhost")
    assert _healthy(port, files)  # none of them still counted against the cap of 5


def _reset(conn: socket.socket) -> None:
    """Closes with a TCP reset, as a client that crashed or lost its network."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_served_and_reset_connections_stop_counting(tls_port: tuple[int, TlsFiles]) -> None:
    # Each connection is counted from its accept and uncounted at its end, whichever way it ends:
    # served and closed, reset right after the handshake, reset with a request half sent.
    port, files = tls_port
    context = ssl.create_default_context(cafile=str(files.ca))
    for _ in range(3 * CAP):
        assert _healthy(port, files)
        secured = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
        )
        _reset(secured)
        secured = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
        )
        secured.sendall(
            b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nAA"
        )
        _reset(secured)
    assert _healthy(port, files)  # none of them still counted against the cap of 5


def test_a_silent_tls_connection_is_closed_at_the_deadline_and_past_the_cap_before_tls(
    tls_port: tuple[int, TlsFiles],
) -> None:
    port, files = tls_port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(CAP)]
    try:
        extra = socket.create_connection(("127.0.0.1", port))
        extra.sendall(b"\x16\x03\x01")  # the start of a ClientHello, past the cap
        assert _gone(extra, 0.5)  # closed without a handshake, before its 1 s deadline
        extra.close()
        assert all(_gone(conn) for conn in silent)  # the handshake deadline (1 s here)
    finally:
        for conn in silent:
            conn.close()
    assert _healthy(port, files)


def test_an_idle_tls_connection_is_aborted_at_the_deadline(tls_port: tuple[int, TlsFiles]) -> None:
    # Not closed gracefully: that waited up to 30 s more for the client's close_notify.
    port, files = tls_port
    context = ssl.create_default_context(cafile=str(files.ca))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        secured = context.wrap_socket(raw, server_hostname="localhost")
        secured.settimeout(5)  # the deadline is 1 s here; a graceful close would be 1 + 2 s
        started = time.monotonic()
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            assert secured.recv(100) == b""
        assert time.monotonic() - started < 5


def test_a_silent_tls_connection_closed_at_the_deadline_is_counted(
    tls_served: tuple[Any, TlsFiles],
) -> None:
    # asyncio's own handshake timeout fired first and closed it uncounted; the sweep does now.
    served, _ = tls_served
    with socket.create_connection(("127.0.0.1", served.http_port)) as silent:
        assert _gone(silent)
    assert served.readings()["http_connections_closed_idle"] == 1


def test_failed_handshakes_leave_nothing_for_the_garbage_collector(
    tls_port: tuple[int, TlsFiles],
) -> None:
    # Each failed handshake's TLS state (some 290 KB) stayed in a reference cycle until a full
    # collection: port scans and probes held hundreds of MB.
    port, _ = tls_port

    def tls_states() -> int:
        return sum(isinstance(o, asyncio.sslproto.SSLProtocol) for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = tls_states()
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", port)) as probe:
                probe.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not TLS: the handshake fails
                _gone(probe)
        time.sleep(0.2)  # the server's side of the last ones
        assert tls_states() - before < 5
    finally:
        gc.enable()
