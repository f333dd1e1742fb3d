"""`create_server(config)`: load all state into memory, start the gRPC server (health, reflection,
the edge interceptor), start the cross-process sync thread, then report SERVING."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import structlog

from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.servicer import OperatorServicer
from svc_common.clock import Clock
from svc_common.grpc_server import Served, start_server
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

_log = structlog.get_logger("operator")

SERVICE_NAME = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
ERROR_DOMAIN = "operator.uid2"


@dataclass
class OperatorServed(Served):
    """A `Served` that ends opt-out streams before draining, so a stop never waits on them."""

    before_drain: list[Callable[[], None]] = field(default_factory=list)
    operator: Operator | None = None
    # The official HTTP API's bound port when `config.http_listen` is set (operator_svc.http).
    http_port: int | None = None

    def stop(self, grace_s: float = 5.0) -> None:
        for callback in self.before_drain:
            callback()
        self.before_drain.clear()
        super().stop(grace_s)


def create_server(
    config: OperatorConfig,
    *,
    clock: Clock | None = None,
    rng: Callable[[int], bytes] | None = None,
) -> tuple[OperatorServed, int]:
    """Returns the started server (SERVING once state is loaded) and its bound port."""
    operator = Operator.open(config, clock=clock, rng=rng)
    servicer = OperatorServicer(operator)

    def register(server: grpc.Server) -> None:
        operator_pb2_grpc.add_OperatorServiceServicer_to_server(servicer, server)

    try:
        base = start_server(
            listen=config.listen,
            domain=ERROR_DOMAIN,
            register=register,
            service_names=(SERVICE_NAME,),
            max_workers=config.max_workers,
        )
    except BaseException:
        operator.close()
        raise
    served = OperatorServed(
        server=base.server,
        port=base.port,
        health=base.health,
        service_names=base.service_names,
        operator=operator,
    )
    served.before_drain.append(operator.close_streams)
    served.on_stop.append(operator.close)
    if config.http_listen is not None:
        from operator_svc.http.app import HttpFrontDoor

        front = HttpFrontDoor(operator, config.http_listen, rng=rng or os.urandom)
        try:
            served.http_port = front.start()
        except BaseException:
            served.stop(0)
            raise
        # Runs before operator.close (on_stop runs in reverse), so HTTP drains first.
        served.on_stop.append(front.stop)
    operator.start_sync()
    served.set_serving(True)
    return served, served.port
