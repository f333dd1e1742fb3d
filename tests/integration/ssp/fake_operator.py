"""A tiny in-test OperatorService peer: GetBidstreamKeys over real uid2_crypto keys, and
WatchOptOuts pushing opt-outs as the test records them. Stands in for the operator in the
in-process tests; tests against the real operator live in test_with_operator.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from svc_common.errors import unauthenticated
from svc_common.grpc_aio import start_adapted_server
from svc_common.grpc_edge import bearer_token
from svc_common.grpc_server import Served
from tests.unit.ssp.support import KeySet
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

API_KEY = "id-reader-key"
SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]


class FakeOperator(operator_pb2_grpc.OperatorServiceServicer):
    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.key_fetches = 0
        self.watches = 0
        self._optouts: list[tuple[str, int]] = []
        self._cond = threading.Condition()
        self._closed = False

    def _auth(self, context: Any) -> None:
        if bearer_token(context) != API_KEY:
            raise unauthenticated("UNKNOWN_API_KEY", "unknown key")

    def GetBidstreamKeys(self, request: Any, context: Any) -> Any:
        self._auth(context)
        self.key_fetches += 1
        return operator_pb2.GetBidstreamKeysResponse(key_container=self.keys.container_proto())

    def WatchOptOuts(self, request: Any, context: Any) -> Iterator[Any]:
        self._auth(context)
        self.watches += 1
        sent = 0
        backlog = True
        while context.is_active() and not self._closed:
            with self._cond:
                pending = [o for o in self._optouts[sent:] if o[1] >= request.since]
                sent = len(self._optouts)
                if not pending and not backlog:
                    self._cond.wait(0.1)
            for raw_uid, at in pending:
                yield operator_pb2.WatchOptOutsResponse(raw_uid=raw_uid, opted_out_at=at)
            if backlog:  # as the operator does: the mark once the backlog is out
                backlog = False
                yield operator_pb2.WatchOptOutsResponse(backlog_sent=True)

    def opt_out(self, raw_uid: str, at_ms: int) -> None:
        with self._cond:
            self._optouts.append((raw_uid, at_ms))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def serve_fake_operator(fake: FakeOperator, listen: str = "127.0.0.1:0") -> Served:
    served = start_adapted_server(
        listen=listen,
        domain="operator.test",
        servicer=fake,
        service=SERVICE,
        add_servicer=operator_pb2_grpc.add_OperatorServiceServicer_to_server,
        blocking=(),
        workers=2,
        max_streams=16,
    )
    served.on_stop.append(fake.close)
    served.set_serving(True)
    return served
