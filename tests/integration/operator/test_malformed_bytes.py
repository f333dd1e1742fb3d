"""Bytes that parse as no request message, to every operator RPC on a live server."""

from __future__ import annotations

from tests.integration.operator.conftest import Live
from tests.support.malformed_bytes import assert_every_method_rejects_malformed_bytes
from uid2.operator.v1 import operator_pb2


def test_every_rpc_answers_malformed_bytes_invalid_argument(live: Live) -> None:
    service = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]
    # Parsed at the edge before anything else: with or without a valid API key, the same answer.
    assert_every_method_rejects_malformed_bytes(live.channel, service)
    assert_every_method_rejects_malformed_bytes(live.channel, service, live.md("pub"))
