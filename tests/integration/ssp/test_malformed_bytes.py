"""Bytes that parse as no request message, to every SSP and sample-bidder RPC on live servers."""

from __future__ import annotations

import grpc

from tests.integration.ssp.conftest import Stack
from tests.support.malformed_bytes import assert_every_method_rejects_malformed_bytes
from uid2.ssp.v1 import openrtb_pb2, ssp_pb2


def test_every_rpc_answers_malformed_bytes_invalid_argument(fast_stack: Stack) -> None:
    assert_every_method_rejects_malformed_bytes(
        fast_stack.channel,
        ssp_pb2.DESCRIPTOR.services_by_name["SspService"],
        (("authorization", f"Bearer {fast_stack.pub_key}"),),
    )
    with grpc.insecure_channel(f"127.0.0.1:{fast_stack.dsps[0].port}") as channel:
        assert_every_method_rejects_malformed_bytes(
            channel, openrtb_pb2.DESCRIPTOR.services_by_name["BidderService"]
        )
