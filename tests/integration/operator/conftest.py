from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.server import OperatorServed, create_server
from operator_svc.store import OperatorStore
from svc_common.clock import SystemClock
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg

ROLES = ("GENERATOR", "MAPPER", "ID_READER", "SHARER", "OPTOUT", "ADMIN")


def init_dir(d: Path) -> None:
    store = OperatorStore.create(d)
    admin.initialise(store, SystemClock().now_ms(), os.urandom)
    store.close()


def add_client(d: Path, site_id: int, name: str, roles: list[str]) -> admin.NewClient:
    store = OperatorStore.open(d)
    try:
        return admin.add_client(
            store,
            site_id=site_id,
            name=name,
            roles=roles,
            now_ms=SystemClock().now_ms(),
            rng=os.urandom,
        )
    finally:
        store.close()


def md(client: admin.NewClient) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Bearer " + client.api_key),)


OK_PRIVACY = pb.PrivacySettings(transparency_notice_accepted=True)


@dataclass
class Live:
    dir: Path
    served: OperatorServed
    port: int
    channel: grpc.Channel
    stub: pbg.OperatorServiceStub
    clients: dict[str, admin.NewClient] = field(default_factory=dict)

    def md(self, name: str) -> tuple[tuple[str, str], ...]:
        return md(self.clients[name])

    def generate(self, name: str, email: str, **kw: Any) -> pb.GenerateTokenResponse:
        return self.stub.GenerateToken(  # type: ignore[no-any-return]  # grpc is untyped: its calls return Any
            pb.GenerateTokenRequest(dii=pb.Dii(email=email), privacy_settings=OK_PRIVACY, **kw),
            metadata=self.md(name),
            timeout=10,
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    d = tmp_path_factory.mktemp("live")
    init_dir(d)
    clients = {role: add_client(d, 100 + i, role.lower(), [role]) for i, role in enumerate(ROLES)}
    clients["pub"] = add_client(d, 200, "pub", ["GENERATOR", "MAPPER", "OPTOUT"])
    clients["reader"] = add_client(d, 300, "reader", ["ID_READER"])
    served, port = create_server(
        OperatorConfig(data_dir=d, listen="127.0.0.1:0", sync_interval_s=0.05)
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield Live(d, served, port, channel, pbg.OperatorServiceStub(channel), clients)
    channel.close()
    served.stop(1.0)
