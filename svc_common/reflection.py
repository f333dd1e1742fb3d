"""Server reflection under both names clients ask for: grpc.reflection.v1alpha (what
grpcio-reflection serves) and grpc.reflection.v1 (what buf curl and grpcurl try first; without
it, each of their calls costs a round trip and an UNIMPLEMENTED log line before the fallback).
The two protocols are the same messages under another package name, so one servicer answers
both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Sequence[str], server: Any) -> None:
    """Reflection for `service_names` (plus health and reflection itself) on `server`, a
    grpc.aio server. Call before any catch-all generic handler."""
    names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # v1alpha
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )
