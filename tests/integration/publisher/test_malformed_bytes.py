"""Bytes that parse as no request message, to every publisher RPC on a live server."""

from __future__ import annotations

from tests.integration.publisher.conftest import World
from tests.support.malformed_bytes import assert_every_method_rejects_malformed_bytes
from uid2.publisher.v1 import publisher_pb2


def test_every_rpc_answers_malformed_bytes_invalid_argument(world: World) -> None:
    world.publisher(world.config("malformed"))
    assert_every_method_rejects_malformed_bytes(
        world.channels[-1], publisher_pb2.DESCRIPTOR.services_by_name["PublisherService"]
    )
