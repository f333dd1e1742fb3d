"""A gRPC port holds a bounded number of connections, and drops one that never starts HTTP/2.
Without either, connections that sent nothing (no API key needed) were held 120 s each, as many
as the open-files limit allowed, and took every listener of the process down."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svc_common import grpc_server
from svc_common.grpc_server import Served
from tests.support.h2_stall import ACK, END_HEADERS, GOAWAY, HEADERS, SETTINGS, _frame, call_headers
from tests.support.health_server import health_only_server

CAP = 8


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setattr(grpc_server, "MAX_CONNECTIONS", CAP)
    monkeypatch.setattr(grpc_server, "HANDSHAKE_TIMEOUT_MS", 4000)
    s = health_only_server()
    yield s
    s.stop(0)


def _health(port: int) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_silent_connections_are_capped_then_dropped(served: Served) -> None:
    # No call first: its closed connection may still count for a moment, refusing a silent one.
    silent = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(CAP)]
    try:
        for s in silent:  # taken on by the server (it sent its SETTINGS), so counted
            s.settimeout(5)
            assert s.recv(1)
        assert _health(served.port) is grpc.StatusCode.UNAVAILABLE  # past the cap: refused
        # The handshake deadline drops them though they stay open on this side, so the port
        # serves again while the flood is still there.
        deadline = time.monotonic() + 10
        while _health(served.port) is not grpc.StatusCode.OK:
            assert time.monotonic() < deadline, "silent connections never dropped"
            time.sleep(0.2)
        for s in silent:
            s.settimeout(2)
            while s.recv(4096):  # the server's SETTINGS, then its close
                pass
    finally:
        for s in silent:
            s.close()


def test_a_connection_that_went_quiet_after_its_handshake_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: connections that finished the HTTP/2 handshake, then sent nothing, were held for
    good (keepalive pings only connections with calls open): 4,096 of them, no API key needed,
    locked every new caller out. One with no call open is now closed, GOAWAY first."""
    monkeypatch.setattr(grpc_server, "MAX_CONNECTION_IDLE_MS", 1000)
    server = health_only_server()
    quiet = socket.create_connection(("127.0.0.1", server.port))
    try:
        quiet.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0))
        quiet.sendall(_frame(SETTINGS, ACK, 0))
        quiet.settimeout(10)
        began, received = time.monotonic(), b""
        while chunk := quiet.recv(4096):  # the server's SETTINGS, its GOAWAY, then its close
            received += chunk
        assert time.monotonic() - began < 8
        assert _frame_kinds(received).count(GOAWAY) >= 1
    finally:
        quiet.close()
        server.stop(0)


def _frame_kinds(data: bytes) -> list[int]:
    kinds, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        kinds.append(data[at + 3])
        at += 9 + length
    return kinds


def test_a_connection_holding_a_call_that_never_sends_its_message_is_closed_at_its_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adversarial review: one such call per connection kept 4,096 connections, and every new
    caller out, for good; the idle limit counts only connections with no call open."""
    monkeypatch.setattr(grpc_server, "MAX_CONNECTION_AGE_MS", 1000)
    monkeypatch.setattr(grpc_server, "MAX_CONNECTION_AGE_GRACE_MS", 1000)
    server = health_only_server()
    held = socket.create_connection(("127.0.0.1", server.port))
    try:
        call = call_headers("/grpc.health.v1.Health/Check", f"127.0.0.1:{server.port}")
        held.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(SETTINGS, 0, 0)
            + _frame(SETTINGS, ACK, 0)
            + _frame(HEADERS, END_HEADERS, 1, call)  # and never its message
        )
        held.settimeout(15)
        began, received = time.monotonic(), b""
        while chunk := held.recv(4096):  # GOAWAY at its age, the close after the grace
            received += chunk
        assert time.monotonic() - began < 10
        assert GOAWAY in _frame_kinds(received)
    finally:
        held.close()
        server.stop(0)
