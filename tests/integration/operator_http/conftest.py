"""One operator per module, serving gRPC and the official HTTP API from the same process, on a
temp data dir set up through the operator's admin layer (as `uid2-operator init / client add`)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.server import OperatorServed, create_server
from svc_common.clock import ManualClock, SystemClock
from tests.integration.operator.conftest import add_client, init_dir
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg
from uid2_crypto.envelope import decrypt_response, encrypt_request

ALL_ROLES = ["GENERATOR", "MAPPER", "ID_READER", "SHARER", "OPTOUT"]


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpLive:
    served: OperatorServed
    grpc_port: int
    http_port: int
    stub: pbg.OperatorServiceStub
    channel: grpc.Channel
    clients: dict[str, admin.NewClient] = field(default_factory=dict)
    # The operator's clock when started with `manual_clock=True`.
    clock: ManualClock | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def grpc_md(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer " + self.clients[name].api_key),)

    def generate(self, email: str, name: str = "all") -> pb.Identity:
        """A token for `email` over gRPC GenerateToken, as client `name` (consent given)."""
        response: pb.GenerateTokenResponse = self.stub.GenerateToken(
            pb.GenerateTokenRequest(
                dii=pb.Dii(email=email),
                privacy_settings=pb.PrivacySettings(transparency_notice_accepted=True),
            ),
            metadata=self.grpc_md(name),
            timeout=10,
        )
        return response.identity

    def raw(
        self,
        path: str,
        body: bytes = b"",
        *,
        method: str = "POST",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def envelope(
        self,
        name: str,
        payload: Any,
        *,
        ts_ms: int | None = None,
        secret: bytes | None = None,
        nonce: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08",
    ) -> bytes:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        key = secret if secret is not None else base64.b64decode(self.clients[name].secret)
        now = ts_ms if ts_ms is not None else time.time_ns() // 1_000_000
        return encrypt_request(key, data, now_ms=now, nonce=nonce, iv=os.urandom(12))

    def call(self, name: str, path: str, payload: Any) -> tuple[int, Any]:
        """A sealed request as the SDK sends it; returns (HTTP status, decrypted or error JSON)."""
        nonce = os.urandom(8)
        body = base64.b64encode(self.envelope(name, payload, nonce=nonce))
        reply = self.raw(path, body, headers=self.auth(name))
        if reply.status != 200:
            return reply.status, reply.json()
        secret = base64.b64decode(self.clients[name].secret)
        _, echoed, plain = decrypt_response(secret, base64.b64decode(reply.body))
        assert echoed == nonce
        return reply.status, json.loads(plain)

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.clients[name].api_key}


def start(tmp: Any, *, manual_clock: bool = False, **config: Any) -> HttpLive:
    init_dir(tmp)
    clients = {
        "all": add_client(tmp, 100, "all", ALL_ROLES),
        "gen": add_client(tmp, 101, "gen", ["GENERATOR"]),
        "reader": add_client(tmp, 300, "reader", ["ID_READER"]),
    }
    clock = None
    if manual_clock:
        # Held from after `init` and `client add`: their keys activate at the real second they
        # ran, so a clock read before them (a slow init crossing a second) had no active key.
        clock = config["clock"] = ManualClock(SystemClock().now_ms())
    served, port = create_server(
        OperatorConfig(
            data_dir=tmp, listen="127.0.0.1:0", http_listen="127.0.0.1:0", sync_interval_s=0.05
        ),
        **config,
    )
    assert served.http_port
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return HttpLive(
        served, port, served.http_port, pbg.OperatorServiceStub(channel), channel, clients, clock
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpLive]:
    lv = start(tmp_path_factory.mktemp("http"))
    yield lv
    lv.channel.close()
    lv.served.stop(1.0)
