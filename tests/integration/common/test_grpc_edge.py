"""The edge on real servers (grpc.aio, driving a sync servicer through SyncServicerAdapter, as
every service serves): domain errors become statuses with ErrorInfo, bugs become INTERNAL
without leaking their text, and every call logs one line without payloads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svc_common import call_context
from svc_common.aio_adapter import SyncServicerAdapter
from svc_common.errors import ErrorKind, ServiceError, invalid_argument
from svc_common.grpc_aio import start_adapted_server, start_aio_server
from svc_common.grpc_client import RemoteError, call_with_retry, error_info, to_remote_error
from svc_common.grpc_server import Served
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
        return operator_pb2.GenerateTokenResponse(status=operator_pb2.GENERATE_TOKEN_STATUS_SUCCESS)

    def WatchOptOuts(self, request: Any, context: Any) -> Iterator[Any]:
        yield operator_pb2.WatchOptOutsResponse(raw_uid="a", opted_out_at=1)
        raise ServiceError(ErrorKind.PERMISSION_DENIED, "ROLE_REQUIRED", "needs ID_READER")


SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]


def _aio_served(servicer: Any, pool_size: int, **adapter: Any) -> Served:
    """`servicer` on grpc.aio through SyncServicerAdapter, as the operator serves; the pool is
    shut down when the server stops."""
    pool = ThreadPoolExecutor(pool_size)
    adapted = SyncServicerAdapter(servicer, SERVICE, pool=pool, stream_pool=pool, **adapter)
    s = start_aio_server(
        listen="127.0.0.1:0",
        domain="test.uid2",
        register=lambda srv: operator_pb2_grpc.add_OperatorServiceServicer_to_server(
            adapted,  # type: ignore[arg-type]  # the adapter stands in for the servicer base
            srv,
        ),
        service_names=[SERVICE.full_name],
        served_class=Served,
    )
    s.on_stop.append(pool.shutdown)
    return s


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = _aio_served(_Servicer(), 2, blocking={"OptOut"})  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
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


def test_calls_by_method_name_get_the_same_edge(served: Served) -> None:
    """Generated stubs call registered methods; reflection clients, grpc-js and buf curl call by
    name, through the generic handlers. Both paths are behind the edge; unknown names are
    UNIMPLEMENTED with an ErrorInfo like every other error, whatever the kind of call."""
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        by_name = channel.unary_unary(
            f"/{SERVICE.full_name}/GenerateToken",
            request_serializer=operator_pb2.GenerateTokenRequest.SerializeToString,
            response_deserializer=operator_pb2.GenerateTokenResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            by_name(operator_pb2.GenerateTokenRequest(dii=operator_pb2.Dii(email="x")))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.domain == "test.uid2"
        stream_by_name = channel.unary_stream(
            f"/{SERVICE.full_name}/WatchOptOuts",
            request_serializer=operator_pb2.WatchOptOutsRequest.SerializeToString,
            response_deserializer=operator_pb2.WatchOptOutsResponse.FromString,
        )
        got = []
        with pytest.raises(grpc.RpcError) as caught:
            for item in stream_by_name(operator_pb2.WatchOptOutsRequest()):
                got.append(item.raw_uid)
        assert got == ["a"] and caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert to_remote_error(caught.value).reason == "ROLE_REQUIRED"
        unknown = channel.unary_unary(f"/{SERVICE.full_name}/NoSuchMethod")
        for _ in range(2):  # the second time too: nothing about it was cached
            with pytest.raises(grpc.RpcError) as caught:
                unknown(b"")
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert to_remote_error(caught.value).reason == "UNKNOWN_METHOD"
            assert (error_info(caught.value) or ErrorInfo()).domain == "test.uid2"
        streaming = channel.stream_stream("/uid2.operator.v2.OperatorService/GenerateToken")
        with pytest.raises(grpc.RpcError) as caught:
            list(streaming(iter([b"", b""])))
        assert to_remote_error(caught.value).reason == "UNKNOWN_METHOD"


# A truncated varint, a length past the end, and bytes that are no protobuf at all: malformed
# for any message. For GenerateToken also a string (Dii.email) holding invalid UTF-8.
MALFORMED = (b"\x08", b"\x0a\x05", b"\xff\xff")
BAD_UTF8 = b"\x0a\x03\x0a\x01\xff"


@pytest.mark.parametrize("registered", [True, False])
def test_malformed_request_bytes_are_invalid_argument(
    served: Served, registered: bool, capsys: Any
) -> None:
    """grpc's own parsing would answer these INTERNAL or UNKNOWN and log nothing; the edge
    parses instead. Unary and streaming, registered methods and calls by name alike."""
    configure_logging(service="test")
    capsys.readouterr()
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        unary = channel.unary_unary(
            f"/{SERVICE.full_name}/GenerateToken", _registered_method=registered
        )
        stream = channel.unary_stream(
            f"/{SERVICE.full_name}/WatchOptOuts", _registered_method=registered
        )
        calls = [
            (unary, (*MALFORMED, BAD_UTF8)),
            (lambda raw, **kw: next(stream(raw, **kw)), MALFORMED),
        ]
        for call, inputs in calls:
            for raw in inputs:
                with pytest.raises(grpc.RpcError) as caught:
                    call(raw, timeout=5, metadata=(("x-request-id", "malformed"),))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raw
                assert to_remote_error(caught.value).reason == "MALFORMED_REQUEST"
                assert "DecodeError" not in (caught.value.details() or "")
    time.sleep(0.1)  # an aborted call's line follows its status by a moment
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    ours = [x for x in lines if x.get("request_id") == "malformed"]
    assert [(x["code"], x["reason"]) for x in ours] == [
        ("INVALID_ARGUMENT", "MALFORMED_REQUEST")
    ] * 7


def test_unexpected_exception_is_internal_without_its_text(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _gen(stub, phone="+15551234567")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "+15551234567" not in (caught.value.details() or "")
    assert error_info(caught.value).reason == "INTERNAL"  # type: ignore[union-attr]  # a None fails the test here anyway


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
    bad = operator_pb2.GenerateTokenRequest(dii=operator_pb2.Dii(email=SECRET_EMAIL))
    with contextlib.suppress(grpc.RpcError):
        stub.GenerateToken(bad, metadata=(("x-request-id", "one"),))
    good = operator_pb2.GenerateTokenRequest(dii=operator_pb2.Dii(phone_hash="ok"))
    stub.GenerateToken(good, metadata=(("x-request-id", "two"),))
    time.sleep(0.1)  # an aborted call's line follows its status by a moment
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    ours = [x for x in lines if x.get("event") == "rpc" and x["request_id"] in ("one", "two")]
    assert sorted((x["request_id"], x["code"]) for x in ours) == [
        ("one", "INVALID_ARGUMENT"),
        ("two", "OK"),
    ]
    assert [x["reason"] for x in ours if x["request_id"] == "one"] == ["INVALID_EMAIL"]
    assert all(x["method"].endswith("/GenerateToken") for x in ours)
    assert SECRET_EMAIL not in err


def test_an_unknown_method_logs_one_line_that_does_not_name_it(served: Served, capsys: Any) -> None:
    configure_logging(service="test")
    capsys.readouterr()
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        made_up = channel.unary_unary(f"/{SECRET_EMAIL}/x")
        with pytest.raises(grpc.RpcError):
            made_up(b"", metadata=(("x-request-id", "unknown-1"),))
    time.sleep(0.1)
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    ours = [x for x in lines if x.get("request_id") == "unknown-1"]
    assert [(x["method"], x["code"], x["reason"]) for x in ours] == [
        ("<unknown>", "UNIMPLEMENTED", "UNKNOWN_METHOD")
    ]
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
    # (An aborted call's line is written just after its status goes out, so an earlier test's
    # line may land here: count this call's lines only.)
    ours = [x for x in lines if x.get("event") == "rpc" and x["request_id"] == "req-123"]
    assert len(ours) == 1 and ours[0]["code"] == "OK"


class _Blocking(_Servicer):
    def OptOut(self, request: Any, context: Any) -> Any:
        call_context.bind(site_id=42)
        time.sleep(0.3)
        return operator_pb2.OptOutResponse(opted_out_at=7)

    def WatchOptOuts(self, request: Any, context: Any) -> Iterator[Any]:
        call_context.bind(site_id=43)  # runs in a stream-pool thread
        yield operator_pb2.WatchOptOutsResponse(raw_uid="a", opted_out_at=1)


class _Held(_Blocking):
    """OptOut waits until the test lets it go: on the event loop it would hold every call."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def OptOut(self, request: Any, context: Any) -> Any:
        call_context.bind(site_id=42)
        self.entered.set()
        self.release.wait(10)
        return operator_pb2.OptOutResponse(opted_out_at=7)


def test_aio_blocking_method_runs_off_the_event_loop(capsys: Any) -> None:
    """While one call waits in the pool, an inline call still answers; what a pooled method or
    a pumped stream binds for the log (its caller's site) reaches the call's line. (No timing:
    an inline call answered while the pooled one is held proves it; a sub-0.2 s bound was
    flaky on a loaded box.)"""
    configure_logging(service="test")
    servicer = _Held()  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
    s = _aio_served(servicer, 2, blocking={"OptOut"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            slow = stub.OptOut.future(operator_pb2.OptOutRequest())
            assert servicer.entered.wait(5)
            answer = stub.GenerateToken(
                operator_pb2.GenerateTokenRequest(dii=operator_pb2.Dii(phone_hash="ok")),
                timeout=5,
            )
            assert answer.status == operator_pb2.GENERATE_TOKEN_STATUS_SUCCESS
            assert not slow.done()
            servicer.release.set()
            assert slow.result(timeout=5).opted_out_at == 7
            assert [i.raw_uid for i in stub.WatchOptOuts(operator_pb2.WatchOptOutsRequest())] == [
                "a"
            ]
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
        optout = [x for x in lines if x.get("method", "").endswith("/OptOut")]
        assert [x.get("site_id") for x in optout] == [42]
        watch = [x for x in lines if x.get("method", "").endswith("/WatchOptOuts")]
        assert [x.get("site_id") for x in watch] == [43]
    finally:
        s.stop(0)


class _Waiting(_Servicer):
    def WatchOptOuts(self, request: Any, context: Any) -> Iterator[Any]:
        yield operator_pb2.WatchOptOutsResponse(raw_uid="first", opted_out_at=1)
        while context.is_active():
            time.sleep(0.02)


def test_aio_streams_past_the_limit_are_refused_not_left_hanging() -> None:
    servicer = _Waiting()  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
    s = _aio_served(servicer, 4, blocking=(), max_streams=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            first = stub.WatchOptOuts(operator_pb2.WatchOptOutsRequest())
            assert next(first).raw_uid == "first"
            with pytest.raises(grpc.RpcError) as caught:
                next(stub.WatchOptOuts(operator_pb2.WatchOptOutsRequest(), timeout=5))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(caught.value).reason == "TOO_MANY_STREAMS"  # type: ignore[union-attr]  # a None fails the test here anyway
            first.cancel()
            time.sleep(0.2)
            again = stub.WatchOptOuts(operator_pb2.WatchOptOutsRequest(), timeout=5)
            assert next(again).raw_uid == "first"
            again.cancel()
    finally:
        s.stop(0)


def test_aio_stop_leaves_no_task_pending_for_the_garbage_collector() -> None:
    # grpc can leave an RPC's task pending when the loop stops; destroyed later by the garbage
    # collector it printed a GeneratorExit traceback into another test's stderr (a CI failure).
    s = _aio_served(_Servicer(), 1, blocking=())  # type: ignore[abstract]  # a partial fake
    assert s.loop is not None
    ended: list[str] = []

    async def left_behind() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    future = asyncio.run_coroutine_threadsafe(left_behind(), s.loop)
    time.sleep(0.05)
    s.stop(0)
    assert ended == ["cancelled"] and future.cancelled()
    assert not [t for t in asyncio.all_tasks(s.loop) if not t.done()]


class _PatientStreamer(operator_pb2_grpc.OperatorServiceServicer):
    def WatchOptOuts(self, request: Any, context: Any) -> Iterator[Any]:
        yield operator_pb2.WatchOptOutsResponse(raw_uid="a", opted_out_at=1)
        while context.is_active():  # as the SSP's bid stream waits: returns once the reader goes
            time.sleep(0.01)


def test_a_stream_its_reader_cancelled_is_logged_cancelled_not_ok(capsys: Any) -> None:
    configure_logging("INFO", service="test")
    servicer = _PatientStreamer()  # type: ignore[abstract]  # only the RPC the test calls
    served = _aio_served(servicer, 2, blocking=())
    try:
        capsys.readouterr()
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stream = operator_pb2_grpc.OperatorServiceStub(channel).WatchOptOuts(
                operator_pb2.WatchOptOutsRequest(), metadata=(("x-request-id", "gone-1"),)
            )
            next(stream)
            time.sleep(0.2)  # the handler is in its wait, not sending
            stream.cancel()
            time.sleep(0.2)  # and notices, the channel still open

        def logged() -> list[dict[str, Any]]:
            lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x[:1] == "{"]
            return [x for x in lines if x.get("request_id") == "gone-1"]

        deadline, ours = time.monotonic() + 5, logged()
        while not ours and time.monotonic() < deadline:
            time.sleep(0.05)
            ours = logged()
        assert [x["code"] for x in ours] == ["CANCELLED"]
    finally:
        served.stop(0)


def test_a_stream_its_callers_deadline_ended_is_logged_deadline_exceeded(capsys: Any) -> None:
    configure_logging("INFO", service="test")
    servicer = _PatientStreamer()  # type: ignore[abstract]  # only the RPC the test calls
    served = _aio_served(servicer, 2, blocking=())
    try:
        capsys.readouterr()
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stream = operator_pb2_grpc.OperatorServiceStub(channel).WatchOptOuts(
                operator_pb2.WatchOptOutsRequest(),
                metadata=(("x-request-id", "late-1"),),
                timeout=0.3,
            )
            next(stream)
            with pytest.raises(grpc.RpcError):
                next(stream)
            time.sleep(0.3)  # the handler notices and returns

        def logged() -> list[dict[str, Any]]:
            lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x[:1] == "{"]
            return [x for x in lines if x.get("request_id") == "late-1"]

        deadline, ours = time.monotonic() + 5, logged()
        while not ours and time.monotonic() < deadline:
            time.sleep(0.05)
            ours = logged()
        assert [x["code"] for x in ours] == ["DEADLINE_EXCEEDED"]
    finally:
        served.stop(0)


def test_aio_tells_a_callers_deadline_from_its_cancel(capsys: Any) -> None:
    """grpc.aio cancels a handler at its caller's deadline as when the caller cancels; the line
    says which. Review: a publisher call ended by its caller's deadline was logged CANCELLED,
    where the sync server, letting its handler finish, logged DEADLINE_EXCEEDED CALLER_DEADLINE."""
    configure_logging(service="test")
    s = _aio_served(_Blocking(), 2, blocking={"OptOut"})  # type: ignore[abstract]  # a partial fake
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            capsys.readouterr()
            with pytest.raises(grpc.RpcError):
                stub.OptOut(
                    operator_pb2.OptOutRequest(),
                    timeout=0.1,
                    metadata=(("x-request-id", "late-2"),),
                )
            cancelled = stub.OptOut.future(
                operator_pb2.OptOutRequest(), timeout=5, metadata=(("x-request-id", "gone-2"),)
            )
            time.sleep(0.1)
            cancelled.cancel()
            time.sleep(0.5)  # both handlers' pool threads finish
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x[:1] == "{"]
        seen = {x["request_id"]: (x["code"], x.get("reason")) for x in lines if "request_id" in x}
        assert seen["late-2"] == ("DEADLINE_EXCEEDED", "CALLER_DEADLINE")
        assert seen["gone-2"] == ("CANCELLED", None)
    finally:
        s.stop(0)


def test_an_adapted_servers_threads_end_with_it() -> None:
    """The worker and stream pools of start_adapted_server are shut at its stop (mutation
    review: nothing checked; in a process that starts servers, tests or an embedding
    application, their threads would pile up)."""
    servicer = _Blocking()  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
    served = start_adapted_server(
        listen="127.0.0.1:0",
        domain="pooltest",
        servicer=servicer,
        service=SERVICE,
        add_servicer=operator_pb2_grpc.add_OperatorServiceServicer_to_server,
        blocking={"OptOut"},
        workers=2,
        max_streams=2,
    )
    served.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        assert stub.OptOut(operator_pb2.OptOutRequest(), timeout=5).opted_out_at == 7
        assert [i.raw_uid for i in stub.WatchOptOuts(operator_pb2.WatchOptOutsRequest())] == ["a"]

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("pooltest-")]

    assert ours()  # the pools' threads ran the calls
    served.stop(0)
    deadline = time.monotonic() + 5
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours() == []
