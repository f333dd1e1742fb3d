"""One client starting calls and cancelling them at once, thousands a second, fails no other
client's calls. Adversarial review: on grpcio's aio server without a cap on a connection's
concurrent streams, such a flood (no API key needed) made a sixth to a half of other clients'
calls end CANCELLED, on every service; `grpc.max_concurrent_streams` stops it."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc

from tests.integration.common.test_grpc_edge import _aio_served, _Blocking, _gen, _Servicer
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

FLOOD_S = 4.0


def test_a_flood_of_cancelled_calls_fails_no_other_clients_call() -> None:
    served = _aio_served(_Servicer(), 2, blocking=())  # type: ignore[abstract]  # a partial fake
    address = f"127.0.0.1:{served.port}"
    stop = time.monotonic() + FLOOD_S
    flooding = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cancel_flood", str(served.port),
         "/uid2.operator.v1.OperatorService/GenerateToken", str(FLOOD_S)],
    )  # fmt: skip
    failed: list[str] = []
    calls = 0
    try:
        with grpc.insecure_channel(address) as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            time.sleep(0.3)
            while time.monotonic() < stop - 0.3:
                calls += 1
                try:
                    _gen(stub, phone_hash="ok")
                except grpc.RpcError as err:
                    failed.append(err.code().name)
                time.sleep(0.01)
    finally:
        flooding.wait(FLOOD_S + 10)
        served.stop(0)
    assert calls >= 5 and failed == [], (calls, failed)


def test_two_hundred_calls_in_flight_on_one_channel_all_succeed() -> None:
    """The cap on a connection's open calls is well above what a legitimate client holds: past
    it the server refuses streams (REFUSED_STREAM) and grpcio's client does not queue them, so a
    mapper holding 200 calls on one channel got UNAVAILABLE for a quarter of them at a cap of
    100 (diff review)."""
    served = _aio_served(_Blocking(), 200, blocking={"OptOut"})  # type: ignore[abstract]  # a partial fake
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            calls = [
                stub.OptOut.future(operator_pb2.OptOutRequest(), timeout=30) for _ in range(200)
            ]
            assert [c.result().opted_out_at for c in calls] == [7] * 200
    finally:
        served.stop(0)
