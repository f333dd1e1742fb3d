"""Bytes that are no valid message of any request type, sent to every method of a service on a
live server: each must be INVALID_ARGUMENT with reason MALFORMED_REQUEST (grpc's own parsing
would answer INTERNAL or UNKNOWN)."""

from __future__ import annotations

from typing import Any

import grpc

from svc_common.grpc_client import to_remote_error

# A truncated varint, a length past the end of the message, and two bytes that start no field.
MALFORMED = (b"\x08", b"\x0a\x05", b"\xff\xff")


def assert_every_method_rejects_malformed_bytes(
    channel: grpc.Channel, service: Any, metadata: tuple[tuple[str, str], ...] = ()
) -> None:
    """`service`: the ServiceDescriptor whose methods the server at `channel` implements."""
    checked = 0
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        if method.client_streaming:
            continue
        if method.server_streaming:
            stream = channel.unary_stream(path)

            def call(raw: bytes, rpc: Any = stream) -> Any:
                return next(rpc(raw, timeout=5, metadata=metadata))
        else:
            unary = channel.unary_unary(path)

            def call(raw: bytes, rpc: Any = unary) -> Any:
                return rpc(raw, timeout=5, metadata=metadata)

        for raw in MALFORMED:
            try:
                call(raw)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, raw, err.code())
                assert to_remote_error(err).reason == "MALFORMED_REQUEST", (path, raw)
            else:
                raise AssertionError(f"{path} accepted {raw!r}")
        checked += 1
    assert checked, "no methods to check"
