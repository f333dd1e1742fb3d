"""The HTTP API's connections, on a real operator in process: one that says nothing, or never
finishes its request line or its body, is closed after its deadline; past the cap a new one is
closed as it opens. (Deadlines and cap shortened here; their values are the module's.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from operator_svc.config import OperatorConfig
from operator_svc.http import app as http_app
from operator_svc.server import create_server
from tests.integration.operator.conftest import init_dir


def _closed_by_server(conn: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything the server sent until it closed the connection (raises on a timeout)."""
    conn.settimeout(timeout_s)
    received = b""
    try:
        while chunk := conn.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.fixture
def http_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(http_app, "IDLE_DEADLINE_S", 1.0)
    monkeypatch.setattr(http_app, "BODY_DEADLINE_S", 1.0)
    monkeypatch.setattr(http_app, "MAX_CONNECTIONS", 3)
    init_dir(tmp_path)
    config = OperatorConfig(data_dir=tmp_path, listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    served, _ = create_server(config)
    try:
        assert served.http_port is not None
        yield served.http_port
    finally:
        served.stop(0)


def _health(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _closed_by_server(conn)


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"POST /v2/tok",  # a request line never finished
        b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Le",  # headers never finished
    ],
)
def test_a_request_that_never_arrives_is_closed(http_port: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", http_port)) as conn:
        conn.sendall(sent)
        assert _closed_by_server(conn) == b""


def test_a_body_that_never_arrives_is_408_and_closed(http_port: int) -> None:
    with socket.create_connection(("127.0.0.1", http_port)) as conn:
        conn.sendall(b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nAA")
        answer = _closed_by_server(conn)
    assert answer.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert b'"status":"client_error"' in answer.replace(b" ", b"")


def test_past_the_cap_a_connection_is_closed_as_it_opens(http_port: int) -> None:
    assert b"OK" in _health(http_port)
    held = [socket.create_connection(("127.0.0.1", http_port)) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", http_port)) as extra:
            extra.sendall(b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _closed_by_server(extra) == b""
    finally:
        for conn in held:
            conn.close()
    assert b"OK" in _health(http_port)  # room again once they are gone
