"""The decryptor's client of the operator: GetBidstreamKeys and WatchOptOuts with ID_READER
credentials. Owns deadlines and retries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from bidstream.key_json import key_container_dict
from svc_common.grpc_client import bearer, call_with_retry, to_remote_error
from svc_common.tls import PeerTls
from svc_common.tls_reload import open_channel
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc


class _WatchCall:
    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[tuple[str, int] | None]:
        """Items until the operator ends the stream; a broken stream raises RemoteError."""
        try:
            for item in self._call:
                yield None if item.backlog_sent else (item.raw_uid, item.opted_out_at)
        except grpc.RpcError as err:
            raise to_remote_error(err) from None

    def cancel(self) -> None:
        self._call.cancel()


# Ample for thousands of sites with daily rotation (some 61 bytes a key).
KEYS_MAX_BYTES = 64 * 1024 * 1024

# The opt-out stream is quiet for as long as nobody opts out, and a frozen operator or a network
# that drops packets breaks nothing a reader could see: without pings of its own, the stream
# would wait forever, tokens of users who opt out meanwhile would pass, and the connected gauge
# would say 1. So the channel pings after this long without data and gives the connection up
# when a ping goes unanswered; the stream then breaks and is opened again. The servers accept a
# ping this often (svc_common.grpc_server.MIN_CLIENT_PING_INTERVAL_MS).
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000


class OperatorClient:
    def __init__(
        self, target: str, api_key: str, *, timeout_s: float = 2.0, tls: PeerTls | None = None
    ) -> None:
        # The key container grows with the sites and the keys kept per keyset; gRPC's 4 MiB
        # default would refuse a large deployment's outright, leaving every token undecryptable.
        options = [
            ("grpc.max_receive_message_length", KEYS_MAX_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            # Pings go on however long the stream stays quiet (the default stops after two).
            ("grpc.http2.max_pings_without_data", 0),
        ]
        self._channel = open_channel(target, tls, options)
        self._stub = operator_pb2_grpc.OperatorServiceStub(self._channel)
        self._metadata = bearer(api_key)
        self._timeout_s = timeout_s

    def get_bidstream_keys(self) -> dict[str, Any]:
        """The key JSON body; raises RemoteError."""
        response: operator_pb2.GetBidstreamKeysResponse = call_with_retry(
            self._stub.GetBidstreamKeys,
            operator_pb2.GetBidstreamKeysRequest(),
            timeout_s=self._timeout_s,
            metadata=self._metadata,
            attempts=2,
        )
        return key_container_dict(response.key_container)

    def watch_optouts(self, since_ms: int) -> _WatchCall:
        call = self._stub.WatchOptOuts(
            operator_pb2.WatchOptOutsRequest(since=since_ms), metadata=self._metadata
        )
        return _WatchCall(call)

    def close(self) -> None:
        self._channel.close()
