"""A stop gives the HTTP requests in flight the drain's grace, those whose body is still on
its way included: aiohttp's own shutdown drops the bytes that arrive after it starts, and such
a request was never answered, holding the stop for the whole grace."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from tests.integration.operator_http.conftest import start


def test_a_body_still_arriving_when_the_stop_begins_is_answered(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    live = start(tmp_path_factory.mktemp("drain"))
    live.channel.close()
    body = b"x" * 100  # not a refresh token: answered 400, which is an answer
    sock = socket.create_connection(("127.0.0.1", live.http_port), timeout=10)
    stopper = threading.Thread(target=live.served.stop, args=(5.0,))
    try:
        sock.sendall(
            b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 100\r\n\r\n" + body[:50]
        )
        time.sleep(0.2)  # the request is in: its handler waits for the rest of the body
        started = time.monotonic()
        stopper.start()
        time.sleep(0.2)
        sock.sendall(body[50:])
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:40]
        stopper.join(10)
        assert time.monotonic() - started < 3.0  # answered, not held to the 5 s grace
    finally:
        sock.close()
        stopper.join(10)


def test_keep_alive_connections_are_closed_after_their_answer_once_a_stop_began(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Requests kept coming on open keep-alive connections while the drain waited for one in
    flight: it waited for them the whole grace, then cancelled those in flight."""
    live = start(tmp_path_factory.mktemp("keepalive"))
    live.channel.close()
    slow = socket.create_connection(("127.0.0.1", live.http_port), timeout=10)
    conn = http.client.HTTPConnection("127.0.0.1", live.http_port, timeout=10)
    stopper = threading.Thread(target=live.served.stop, args=(5.0,))
    try:
        conn.request("GET", "/ops/healthcheck")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("Connection") != "close"
        slow.sendall(  # in flight through the stop: its body is not all there
            b"POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x"
        )
        time.sleep(0.2)
        stopper.start()
        time.sleep(0.2)
        conn.request("GET", "/ops/healthcheck")  # on the open keep-alive connection
        during = conn.getresponse()
        during.read()
        assert during.getheader("Connection") == "close"  # the connection's last answer
        slow.sendall(b"x" * 99)
        assert slow.recv(4096).startswith(b"HTTP/1.1 400")
    finally:
        conn.close()
        slow.close()
        if stopper.is_alive() or stopper.ident is not None:
            stopper.join(10)
        else:
            live.served.stop(0)
