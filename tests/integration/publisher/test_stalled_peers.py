"""A real publisher server in front of peers that stop answering: a frozen SSP leaves threads
for the calls that never ask it, and a caller that gives up frees what its call held."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from publisher_svc.config import PublisherConfig
from publisher_svc.model import OperatorPeer, SspPeer
from publisher_svc.server import PublisherRuntime, start
from svc_common.clock import ManualClock
from svc_common.logging import configure_logging
from tests.integration.publisher.conftest import wait_for
from tests.unit.publisher.fakes import FakeOperator, FakeSsp
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc
from uid2.publisher.v1 import publisher_pb2 as pb
from uid2.publisher.v1 import publisher_pb2_grpc

T0 = 1_700_000_000_000
OK = operator_pb2.PrivacySettings(transparency_notice_accepted=True)
# Nothing listens there: the tests that give it never reach that peer.
NOWHERE = "127.0.0.1:9"


def _config(tmp_path: Path, **kw: Any) -> PublisherConfig:
    return PublisherConfig(
        listen="127.0.0.1:0",
        data_dir=str(tmp_path / "pub"),
        operator_address=kw.pop("operator_address", NOWHERE),
        operator_api_key="operator-key",
        site_id=101,
        ssp_address=NOWHERE,
        ssp_api_key="ssp-key",
        background_refresh=False,
        **kw,
    )


class _Publisher:
    def __init__(
        self, config: PublisherConfig, *, operator: OperatorPeer | None, ssp: SspPeer
    ) -> None:
        self.runtime: PublisherRuntime = start(
            config, clock=ManualClock(T0), operator=operator, ssp=ssp
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.runtime.served.port}")
        self.stub = publisher_pb2_grpc.PublisherServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.runtime.served.stop(0)


def _ad(stub: publisher_pb2_grpc.PublisherServiceStub) -> grpc.StatusCode:
    try:
        stub.ServeAd(
            pb.ServeAdRequest(user_id="reader", placement_id="p", page_domain="example.com"),
            timeout=20,
        )
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_a_frozen_ssp_leaves_threads_for_calls_that_never_ask_it(tmp_path: Path) -> None:
    """More ServeAds than the server has threads, the SSP frozen: before the bound, they took
    every thread and a GetAdvertisingToken of a stored user waited for the SSP to come back."""
    gate = threading.Event()
    ssp = FakeSsp(gate=gate)
    config = _config(tmp_path, ssp_calls_max=4, operator_calls_max=4)
    pub = _Publisher(config, operator=FakeOperator(ManualClock(T0)), ssp=ssp)
    callers = 80  # well past the server's threads, with or without the bounds
    try:
        pub.stub.Login(
            pb.LoginRequest(user_id="reader", email="r@example.com", privacy_settings=OK)
        )
        with futures.ThreadPoolExecutor(callers) as pool:
            ads = [pool.submit(_ad, pub.stub) for _ in range(callers)]
            assert wait_for(lambda: ssp.in_flight >= 4)
            # Past the bound the rest are refused, once the first have waited PEER_SLOW_S.
            assert wait_for(lambda: sum(f.done() for f in ads) >= callers - 4)
            started = time.monotonic()
            token = pub.stub.GetAdvertisingToken(
                pb.GetAdvertisingTokenRequest(user_id="reader"), timeout=5
            )
            assert time.monotonic() - started < 0.5
            assert token.status == pb.GET_ADVERTISING_TOKEN_STATUS_SUCCESS
            assert ssp.in_flight == 4
            gate.set()
            codes = [f.result(20) for f in ads]
        assert codes.count(grpc.StatusCode.OK) == 4
        assert codes.count(grpc.StatusCode.UNAVAILABLE) == callers - 4  # SSP_BUSY
        readings = pub.runtime.publisher.readings()
        assert (readings["ssp_calls_waiting"], readings["ssp_calls_shed"]) == (0, callers - 4)
    finally:
        gate.set()
        pub.close()


class _FrozenOperator(operator_pb2_grpc.OperatorServiceServicer):
    """GenerateToken never answers: it waits until its caller gives up (or the test ends)."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def GenerateToken(self, request: Any, context: Any) -> operator_pb2.GenerateTokenResponse:
        self.calls += 1
        while context.is_active() and not self.release.wait(0.02):
            pass
        return operator_pb2.GenerateTokenResponse()


@pytest.fixture
def frozen_operator() -> Iterator[tuple[_FrozenOperator, str]]:
    servicer = _FrozenOperator()  # type: ignore[abstract]  # only the RPC the test calls
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    operator_pb2_grpc.add_OperatorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    servicer.release.set()
    server.stop(0)


def test_a_caller_that_gives_up_frees_its_thread_and_slot(
    tmp_path: Path,
    frozen_operator: tuple[_FrozenOperator, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The operator call is made with the caller's deadline, not --operator-timeout (5 s), is
    not retried after it, and the call is logged as what the caller saw."""
    operator, address = frozen_operator
    config = _config(tmp_path, operator_address=address, operator_timeout_s=5.0)
    configure_logging(service="publisher")
    pub = _Publisher(config, operator=None, ssp=FakeSsp())
    try:
        capsys.readouterr()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as gave_up:
            pub.stub.Login(
                pb.LoginRequest(user_id="u", email="u@example.com", privacy_settings=OK),
                timeout=0.3,
            )
        assert gave_up.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        readings = pub.runtime.publisher.readings
        # Freed with the caller's deadline, well before the operator timeout's 5 s.
        assert wait_for(lambda: readings()["operator_calls_waiting"] == 0, 5.0)
        assert time.monotonic() - started < 1.5
        login: list[dict[str, Any]] = []

        def logged() -> bool:
            # The call's one line is written just after its handler returns (and frees the slot).
            for text in capsys.readouterr().err.splitlines():
                line = json.loads(text) if text.startswith("{") else {}
                if line.get("event") == "rpc" and str(line.get("method")).endswith("Login"):
                    login.append(line)
            return bool(login)

        assert wait_for(logged, 5.0)
        assert [(line["code"], line["reason"]) for line in login] == [
            ("DEADLINE_EXCEEDED", "CALLER_DEADLINE")
        ]
        assert login[0]["latency_ms"] < 1000
        assert operator.calls == 1  # not retried past the deadline
    finally:
        pub.close()
