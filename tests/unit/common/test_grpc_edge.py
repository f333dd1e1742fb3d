"""The edge interceptor on a real server: domain errors become statuses with ErrorInfo, bugs
become INTERNAL without leaking their text, and every call logs one line without payloads."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svc_common.errors import ErrorKind, ServiceError, invalid_argument
from svc_common.grpc_client import RemoteError, call_with_retry, error_info, to_remote_error
from svc_common.grpc_server import Served, start_server
from svc_common.logging import configure_logging
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

SECRET_EMAIL = "leaky.person@example.com"


class _Servicer(operator_pb2_grpc.OperatorServiceServicer):
    def GenerateToken(self, request: Any, context: Any) -> Any:
        which = request.dii.WhichOneof("value")
        if which == "email":
            raise invalid_argument("INVALID_EMAIL", "the email is not valid")
        if which == "phone":
            raise RuntimeError(f"bug involving {request.dii.phone}")
        if which == "email_hash":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "deliberate")
        return operator_pb2.GenerateTokenResponse(status=operator_pb2.GENERATE_TOKEN_STATUS_SUCCESS)

    def WatchOptOuts(self, request: Any, context: Any) -> Iterator[Any]:
        yield operator_pb2.WatchOptOutsResponse(raw_uid="a", opted_out_at=1)
        raise ServiceError(ErrorKind.PERMISSION_DENIED, "ROLE_REQUIRED", "needs ID_READER")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = start_server(
        listen="127.0.0.1:0",
        domain="test.uid2",
        register=lambda srv: operator_pb2_grpc.add_OperatorServiceServicer_to_server(
            _Servicer(), srv
        ),
        service_names=["uid2.operator.v1.OperatorService"],
        max_workers=4,
    )
    yield s
    s.stop(0)


@pytest.fixture()
def stub(served: Served) -> Iterator[operator_pb2_grpc.OperatorServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield operator_pb2_grpc.OperatorServiceStub(channel)


def _gen(stub: Any, **dii: str) -> Any:
    return stub.GenerateToken(operator_pb2.GenerateTokenRequest(dii=operator_pb2.Dii(**dii)))


def test_service_error_maps_to_status_with_error_info(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _gen(stub, email="x")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "INVALID_EMAIL" and info.domain == "test.uid2"


def test_unexpected_exception_is_internal_without_its_text(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _gen(stub, phone="+15551234567")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "+15551234567" not in (caught.value.details() or "")
    assert error_info(caught.value).reason == "INTERNAL"  # type: ignore[union-attr]


def test_servicer_abort_keeps_its_status(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _gen(stub, email_hash="h")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_stream_error_after_items(stub: Any) -> None:
    got = []
    with pytest.raises(grpc.RpcError) as caught:
        for item in stub.WatchOptOuts(operator_pb2.WatchOptOutsRequest()):
            got.append(item.raw_uid)
    assert got == ["a"]
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert to_remote_error(caught.value).reason == "ROLE_REQUIRED"


def test_health_not_serving_until_set(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        before = health.Check(health_pb2.HealthCheckRequest(service="")).status
        served.set_serving(True)
        after = health.Check(health_pb2.HealthCheckRequest(service="")).status
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert after == health_pb2.HealthCheckResponse.SERVING


def test_one_log_line_per_call_without_payload(stub: Any, capsys: Any) -> None:
    configure_logging(service="test")
    capsys.readouterr()
    with contextlib.suppress(grpc.RpcError):
        _gen(stub, email=SECRET_EMAIL)
    _gen(stub, phone_hash="ok")
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    rpc_lines = [line for line in lines if line.get("event") == "rpc"]
    assert [line["code"] for line in rpc_lines] == ["INVALID_ARGUMENT", "OK"]
    assert rpc_lines[0]["reason"] == "INVALID_EMAIL"
    assert all(line["method"].endswith("/GenerateToken") for line in rpc_lines)
    assert len({line["request_id"] for line in rpc_lines}) == 2
    assert SECRET_EMAIL not in err


def test_retry_gives_up_on_unavailable_with_typed_error() -> None:
    calls = []

    def call(request: Any, timeout: float, metadata: Any) -> Any:
        calls.append(request)
        with grpc.insecure_channel("127.0.0.1:1") as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            return stub.RefreshToken(request, timeout=timeout, metadata=metadata)

    with pytest.raises(RemoteError) as caught:
        call_with_retry(
            call,
            operator_pb2.RefreshTokenRequest(),
            timeout_s=1.0,
            attempts=3,
            sleep=lambda _: None,
        )
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(calls) == 3


def test_retry_does_not_retry_other_codes(stub: Any) -> None:
    calls = []

    def call(request: Any, timeout: float, metadata: Any) -> Any:
        calls.append(1)
        return stub.GenerateToken(request, timeout=timeout, metadata=metadata)

    req = operator_pb2.GenerateTokenRequest(dii=operator_pb2.Dii(email="x"))
    with pytest.raises(RemoteError) as caught:
        call_with_retry(call, req, timeout_s=2.0, sleep=lambda _: None)
    assert caught.value.reason == "INVALID_EMAIL" and calls == [1]


def test_caller_request_id_is_logged(stub: Any, capsys: Any) -> None:
    configure_logging(service="test")
    capsys.readouterr()
    stub.GenerateToken(
        operator_pb2.GenerateTokenRequest(dii=operator_pb2.Dii(phone_hash="ok")),
        metadata=(("x-request-id", "req-123"),),
    )
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert [x["request_id"] for x in lines if x.get("event") == "rpc"] == ["req-123"]
