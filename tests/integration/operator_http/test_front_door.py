"""The HTTP front door's own edges, in process: a port it cannot take, the health check while
stopping, and a bug in a handler (a 500 that says nothing, never a traceback to the caller)."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.domain.state import Client
from operator_svc.http import app as http_app
from operator_svc.server import create_server
from tests.integration.operator.conftest import init_dir
from tests.integration.operator_http.conftest import HttpLive
from tests.support.procs import wait_until


def _service_threads() -> list[str]:
    names = ("grpc-aio", "operator-sync", "http-front-door")
    return sorted(t.name for t in threading.enumerate() if t.name in names)


def test_an_http_port_in_use_fails_the_start_with_one_clear_error(tmp_path: Path) -> None:
    init_dir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = OperatorConfig(
            data_dir=tmp_path, listen="127.0.0.1:0", http_listen=f"127.0.0.1:{port}"
        )
        before = _service_threads()
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port} \(HTTP\)"):
            create_server(config)
    # What the failed start took (the gRPC server and its loop, the sync thread) was given back.
    assert wait_until(lambda: _service_threads() == before, 5), _service_threads()
    config = OperatorConfig(data_dir=tmp_path, listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    served, _ = create_server(config)
    try:
        assert served.http_port
    finally:
        served.stop(0)


async def _get_and_post(api: http_app.HttpApi, path: str, body: bytes, headers: Any) -> Any:
    async with TestClient(TestServer(api.app())) as client:
        health = await client.get(http_app.HEALTH_PATH)
        reply = await client.post(path, data=body, headers=headers)
        return (health.status, await health.text()), (
            reply.status,
            {k.lower(): v for k, v in reply.headers.items()},
            await reply.json(),
        )


def _operator(live: HttpLive) -> Operator:
    op = live.served.operator
    assert op is not None
    return op


def test_health_says_not_serving_once_a_stop_began(live: HttpLive) -> None:
    api = http_app.HttpApi(_operator(live))
    api.serving = False
    (health, _) = asyncio.run(_get_and_post(api, "/nowhere", b"", {}))
    assert health == (503, "NOT_SERVING")


def test_a_bug_in_a_handler_is_a_bare_500(live: HttpLive, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(op: Operator, client: Client, payload: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("secret-looking detail")

    monkeypatch.setitem(http_app.ROUTES, "/v2/key/sharing", http_app.Route(broken))
    api = http_app.HttpApi(_operator(live))
    body = base64.b64encode(live.envelope("all", {}))
    headers = {**live.auth("all"), "X-Request-Id": "req-500", "Content-Type": "text/plain"}
    (health, reply) = asyncio.run(_get_and_post(api, "/v2/key/sharing", body, headers))
    assert health == (200, "OK")
    status, reply_headers, answer = reply
    assert status == 500
    assert answer == {"status": "error", "message": "internal error"}
    assert reply_headers["x-request-id"] == "req-500"
