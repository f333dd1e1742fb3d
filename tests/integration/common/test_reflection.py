"""Reflection answers under grpc.reflection.v1 (buf curl's and grpcurl's first try) as under
v1alpha."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from svc_common.grpc_aio import start_aio_server
from svc_common.grpc_server import Served
from svc_common.reflection import V1_SERVICE_NAME
from uid2.operator.v1 import operator_pb2

SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name


@pytest.fixture()
def served() -> Iterator[Served]:
    served = start_aio_server(
        listen="127.0.0.1:0",
        domain="test.uid2",
        register=lambda _server: None,
        service_names=(SERVICE,),
        served_class=Served,
    )
    try:
        yield served
    finally:
        served.stop(0)


@pytest.mark.parametrize("package", ["grpc.reflection.v1", "grpc.reflection.v1alpha"])
def test_services_are_listed_under_either_reflection_package(served: Served, package: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(call(iter([request]), timeout=10))
    listed = {s.name for s in response.list_services_response.service}
    assert SERVICE in listed and "grpc.health.v1.Health" in listed
    assert V1_SERVICE_NAME not in listed  # its descriptor is not in the pool to describe
