"""A real operator (in-process, sharing a hand-moved clock with the publisher) provisioned
through its CLI, a recording SSP, and a helper to start publishers against them."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from operator_svc.cli import main as operator_cli
from operator_svc.config import OperatorConfig
from operator_svc.server import create_server as create_operator
from publisher_svc.config import PublisherConfig
from publisher_svc.model import (
    GenerateResult,
    HashedDii,
    PrivacySettings,
    RefreshResult,
    StorageMode,
)
from publisher_svc.operator_client import OperatorClient
from publisher_svc.server import PublisherRuntime, start
from svc_common.clock import ManualClock
from uid2.publisher.v1 import publisher_pb2_grpc
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc

SITE_ID = 101
OTHER_SITE_ID = 102  # has not delegated to the provider
PROVIDER_SITE_ID = 201
SSP_SITE_ID = 301


def op_cli(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = operator_cli(list(args))
    assert rc == 0, args
    text = out.getvalue().strip()
    return json.loads(text) if text.startswith("{") else {}


class RecordingSsp(ssp_pb2_grpc.SspServiceServicer):
    """SspService.SubmitImpression that records what it received."""

    def __init__(self) -> None:
        self.requests: list[ssp_pb2.SubmitImpressionRequest] = []
        self.auth: list[str] = []

    def SubmitImpression(self, request: Any, context: Any) -> ssp_pb2.SubmitImpressionResponse:
        self.requests.append(request)
        self.auth.extend(v for k, v in context.invocation_metadata() if k == "authorization")
        has = bool(request.advertising_token)
        return ssp_pb2.SubmitImpressionResponse(
            auction_id=f"a{len(self.requests)}",
            outcome=ssp_pb2.AUCTION_OUTCOME_NO_FILL,
            token_disposition=(
                ssp_pb2.TOKEN_DISPOSITION_PASSED_THROUGH
                if has
                else ssp_pb2.TOKEN_DISPOSITION_ABSENT
            ),
        )


class CountingOperator:
    """Wraps the real operator client to count calls (the operator must not be called)."""

    def __init__(self, inner: OperatorClient) -> None:
        self.inner = inner
        self.generates = 0
        self.refreshes = 0

    def generate(self, dii: HashedDii, privacy: PrivacySettings, obo: int) -> GenerateResult:
        self.generates += 1
        return self.inner.generate(dii, privacy, obo)

    def refresh(self, refresh_token: str) -> RefreshResult:
        self.refreshes += 1
        return self.inner.refresh(refresh_token)


@dataclass
class World:
    tmp: Path
    clock: ManualClock
    op_dir: Path
    op_port: int
    op_served: Any
    keys: dict[str, str]
    ssp: RecordingSsp
    ssp_port: int
    ssp_server: grpc.Server
    publishers: list[PublisherRuntime] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def op_address(self) -> str:
        return f"127.0.0.1:{self.op_port}"

    def stop_operator(self) -> None:
        if self.op_served is not None:
            self.op_served.stop(0)
            self.op_served = None

    def start_operator(self) -> None:
        assert self.op_served is None
        deadline = time.monotonic() + 10
        while True:
            try:
                self.op_served, _ = create_operator(
                    OperatorConfig(data_dir=self.op_dir, listen=self.op_address), clock=self.clock
                )
                return
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def config(self, name: str, **kw: Any) -> PublisherConfig:
        base = PublisherConfig(
            listen="127.0.0.1:0",
            data_dir=str(self.tmp / f"pub-{name}"),
            operator_address=self.op_address,
            operator_api_key=self.keys["publisher"],
            site_id=SITE_ID,
            ssp_address=f"127.0.0.1:{self.ssp_port}",
            ssp_api_key="ssp-key-for-publisher",
            storage_mode=StorageMode.SERVER,
            background_refresh=False,
            refresh_interval_s=0.05,
            operator_timeout_s=2.0,
        )
        return replace(base, **kw)

    def publisher(
        self, config: PublisherConfig, *, counting: bool = False
    ) -> tuple[PublisherRuntime, publisher_pb2_grpc.PublisherServiceStub]:
        operator = None
        if counting:
            operator = CountingOperator(
                OperatorClient(config.operator_address, config.operator_api_key)
            )
        # One hand-moved clock for dates and for the refresher's circuit breaker.
        rt = start(config, clock=self.clock, monotonic=self.clock, operator=operator)
        self.publishers.append(rt)
        ch = grpc.insecure_channel(f"127.0.0.1:{rt.served.port}")
        self.channels.append(ch)
        return rt, publisher_pb2_grpc.PublisherServiceStub(ch)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    op_dir = tmp_path / "operator"
    op_dir.mkdir()
    d = str(op_dir)
    op_cli("init", "--data-dir", d)
    op_cli("site", "add", "--data-dir", d, "--site-id", str(SITE_ID), "--name", "pub")
    op_cli("site", "add", "--data-dir", d, "--site-id", str(OTHER_SITE_ID), "--name", "other")
    keys = {
        "publisher": op_cli(
            "client", "add", "--data-dir", d, "--site-id", str(SITE_ID),
            "--name", "pub-gen", "--roles", "GENERATOR",
        )["api_key"],
        "provider": op_cli(
            "client", "add", "--data-dir", d, "--site-id", str(PROVIDER_SITE_ID),
            "--name", "sso", "--roles", "GENERATOR",
        )["api_key"],
        "ssp": op_cli(
            "client", "add", "--data-dir", d, "--site-id", str(SSP_SITE_ID),
            "--name", "ssp-reader", "--roles", "ID_READER",
        )["api_key"],
    }  # fmt: skip
    op_cli(
        "delegation", "grant", "--data-dir", d, "--site-id", str(SITE_ID), "--client-name", "sso"
    )
    clock = ManualClock(time.time_ns() // 1_000_000)
    op_served, op_port = create_operator(
        OperatorConfig(data_dir=op_dir, listen="127.0.0.1:0"), clock=clock
    )
    ssp = RecordingSsp()  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
    ssp_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ssp_pb2_grpc.add_SspServiceServicer_to_server(ssp, ssp_server)
    ssp_port = ssp_server.add_insecure_port("127.0.0.1:0")
    ssp_server.start()
    w = World(tmp_path, clock, op_dir, op_port, op_served, keys, ssp, ssp_port, ssp_server)
    yield w
    for ch in w.channels:
        ch.close()
    for rt in w.publishers:
        rt.served.stop(0)
    w.stop_operator()
    ssp_server.stop(0)


def wait_for(predicate: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
