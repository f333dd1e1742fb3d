"""Builds and starts the sample DSP (BidderService)."""

from __future__ import annotations

import uuid
from contextlib import ExitStack

import structlog

from bidstream.decryptor.runtime import start_decryptor
from dsp_svc.bidding import Bidder
from dsp_svc.config import DspConfig
from dsp_svc.servicer import BidderServicer
from svc_common.clock import Clock, SystemClock
from svc_common.grpc_aio import start_adapted_server
from svc_common.grpc_server import Served, probe_listen
from svc_common.stop_signals import StopRequested
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc

_log = structlog.get_logger("dsp")

SERVICE = openrtb_pb2.DESCRIPTOR.services_by_name["BidderService"]
SERVICE_NAME = SERVICE.full_name


def create_server(
    config: DspConfig, *, clock: Clock | None = None, stop: StopRequested | None = None
) -> tuple[Served, int]:
    """Starts the bidder. `stop` set during start-up cuts short the wait for the operator's
    opt-out backlog; the caller then stops the server it gets."""
    # Before the decryptor, whose first key fetch waits up to 10 s on an unreachable operator:
    # a taken port is then said at once, as the operator and the publisher say it.
    probe_listen(config.listen)
    clock = clock or SystemClock()
    # If the server cannot start (the port is taken), the decryptor's threads and operator
    # channel are stopped before the error propagates.
    with ExitStack() as opened:
        decryptor = None
        if config.operator and config.operator_api_key:
            decryptor = start_decryptor(
                config.operator,
                config.operator_api_key,
                clock,
                key_refresh_s=config.key_refresh_s,
                give_up=stop,
                tls=config.peer_tls,
            )
            opened.callback(decryptor.stop)
        bidder = Bidder(
            config.name,
            checker=decryptor.checker if decryptor else None,
            base_price=config.base_price,
            identified_bonus=config.identified_bonus,
            mode=config.mode,
            delay_ms=config.effective_delay_ms,
            fail_rate=config.fail_rate,
            new_id=lambda: uuid.uuid4().hex,
        )

        served = start_adapted_server(
            listen=config.listen,
            domain="dsp.uid2",
            servicer=BidderServicer(bidder),
            service=SERVICE,
            add_servicer=openrtb_pb2_grpc.add_BidderServiceServicer_to_server,
            # A bid may wait out the configured delay (`--mode slow`).
            blocking={"Bid"},
            workers=config.max_workers,
            owns=opened,
            tls=config.tls,
        )
    if decryptor is not None:
        served.readings = decryptor.readings
        served.counts.append(decryptor.verdict_family())
    if stop is not None and stop.is_set():
        # Stopped during start-up (the opt-out wait given up): neither health nor the log
        # says ready for a server whose caller is about to drain it.
        return served, served.port
    served.set_serving(True)
    _log.info(
        "dsp_ready",
        name=config.name,
        mode=config.mode.value,
        decrypting=decryptor is not None,
    )
    return served, served.port
