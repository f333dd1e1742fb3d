"""The HTTP API's connections, on a real operator in process: one that says nothing, or never
finishes its request line or its body, is closed after its deadline; past the cap a new one is
closed as it opens. (Deadlines and cap shortened here; their values are the module's.)"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(http_app, "IDLE_DEADLINE_S", 1.0)
    monkeypatch.setattr(http_app, "BODY_DEADLINE_S", 1.0)
    monkeypatch.setattr(http_app, "MAX_CONNECTIONS", 3)
    init_dir(tmp_path)
    config = OperatorConfig(data_dir=tmp_path, listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    served, _ = create_server(config)
    try:
        yield served
    finally:
        served.stop(0)


@pytest.fixture
def http_port(served: Any) -> int:
    assert served.http_port is not None
    return int(served.http_port)


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


def test_past_the_cap_a_connection_is_closed_as_it_opens(http_port: int, served: Any) -> None:
    assert b"OK" in _health(http_port)
    held = [socket.create_connection(("127.0.0.1", http_port)) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", http_port)) as extra:
            extra.sendall(b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _closed_by_server(extra) == b""
        readings = served.readings()
        assert readings["http_connections_open"] == 3
        assert readings["http_connections_refused"] == 1
    finally:
        for conn in held:
            conn.close()
    assert b"OK" in _health(http_port)  # room again once they are gone


def test_connections_stop_counting_however_they_end(http_port: int, served: Any) -> None:
    for _ in range(10):
        assert b"OK" in _health(http_port)  # served, then closed by the server
        with socket.create_connection(("127.0.0.1", http_port)) as conn:  # keep-alive, then
            conn.sendall(b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")  # closed by
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")  # the client
        half = socket.create_connection(("127.0.0.1", http_port))  # reset mid-body
        half.sendall(b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nAA")
        half.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        half.close()
    deadline = time.monotonic() + 5
    while served.readings()["http_connections_open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.readings()["http_connections_open"] == 0
    assert served.readings()["http_connections_closed_idle"] == 0  # none left to the sweep


def test_an_unauthenticated_body_past_64_kib_is_refused_before_it_is_read(http_port: int) -> None:
    with socket.create_connection(("127.0.0.1", http_port)) as conn:
        conn.sendall(
            b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\nAA"
        )
        answer = _closed_by_server(conn)
    assert answer.split(b"\r\n")[0] == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"65536" in answer


def test_past_the_body_budget_a_request_is_503_before_its_body(
    http_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_app, "BODY_BUDGET_BYTES", 1000)
    monkeypatch.setattr(http_app, "SMALL_HOLD_BYTES", 0)  # these small bodies count here
    head = b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 800\r\n\r\n"
    with socket.create_connection(("127.0.0.1", http_port)) as stalled:
        stalled.sendall(head + b"AA")  # 800 bytes announced, held until its deadline
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", http_port)) as second:
            second.sendall(head + b"A" * 800)
            answer = _closed_by_server(second)
        assert answer.split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable"
        assert b"too many large requests" in answer
        assert _closed_by_server(stalled).split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    # The budget is given back: the same request goes through (400: not a refresh token).
    with socket.create_connection(("127.0.0.1", http_port)) as third:
        third.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + b"A" * 800)
        assert _closed_by_server(third).split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"


def test_a_client_that_never_reads_loses_its_connection(http_port: int) -> None:
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect(("127.0.0.1", http_port))
    conn.setblocking(False)
    request = b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    deadline = time.monotonic() + 15
    aborted = False
    try:
        while time.monotonic() < deadline:  # answers pile up unread, then the deadline passes
            try:
                conn.send(request)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                aborted = True
                break
            time.sleep(0.1)
    finally:
        conn.close()
    assert aborted


def test_a_chunked_unauthenticated_body_is_refused_once_past_64_kib(http_port: int) -> None:
    with socket.create_connection(("127.0.0.1", http_port)) as conn:
        conn.sendall(
            b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"10000\r\n"
            + b"A" * 0x10000
            + b"\r\n10\r\n"
            + b"B" * 16
            + b"\r\n"
        )  # 64 KiB and 16 bytes, and no end: refused on the way, not at the deadline
        answer = _closed_by_server(conn)
    assert answer.split(b"\r\n")[0] == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_chunked_body_reserves_its_routes_limit_not_the_largest(
    http_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_app, "BODY_BUDGET_BYTES", 2 * 64 * 1024)
    monkeypatch.setattr(http_app, "SMALL_HOLD_BYTES", 0)
    head = b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na"
    stalled = [socket.create_connection(("127.0.0.1", http_port)) for _ in range(2)]
    try:
        for conn in stalled:
            conn.sendall(head)  # two bodies of 64 KiB at most: the budget holds them (not 2 MiB)
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", http_port)) as third:  # the cap is 3
            third.sendall(head)
            assert _closed_by_server(third).split(b"\r\n")[0].endswith(b" 503 Service Unavailable")
        for conn in stalled:
            assert _closed_by_server(conn).split(b"\r\n")[0].endswith(b" 408 Request Timeout")
    finally:
        for conn in stalled:
            conn.close()


_KEY = b"UID2-C-f89408a8140f-vL6fQ2xYz0aBcDeFgHiJkLmNoPqRsTuVwXyZ01234"


@pytest.mark.parametrize(
    "sent",
    [
        # a control character in a header: aiohttp's answer quoted the whole header line
        b"POST /v2/token/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + _KEY
        + b"\x01\r\n\r\n",
        # a request target the parser refuses, quoted back with the email in it
        b"GET /ops/healthcheck?email=Alice.Example@example.com\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        # a header past 8 KB, quoted back from its start
        b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\nX-Note: Alice.Example@example.com"
        + b"a" * 9000 + b"\r\n\r\n",
    ],
)  # fmt: skip
def test_a_request_the_parser_refuses_is_answered_in_json_without_its_bytes(
    http_port: int, sent: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", http_port)) as conn:
        conn.sendall(sent)
        answer = _closed_by_server(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    # HTTP/1.0: aiohttp answers so when it could not read the request's version
    assert head.split(b"\r\n")[0].split(b" ")[1].startswith(b"4"), answer[:200]
    assert b"application/json" in head
    assert json.loads(body) == {"status": "client_error", "message": "malformed HTTP request"}
    assert b"Alice" not in answer and b"vL6f" not in answer
