"""Builds and starts the SSP: accounts, bid-stream hub, bidders, and (with operator ID_READER
credentials) the decryptor; then reports SERVING."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import ExitStack

import structlog

from bidstream.decryptor.runtime import start_decryptor
from ssp_svc.bidders import BidderPool
from ssp_svc.config import ConfigError, SspConfig
from ssp_svc.exchange import Exchange
from ssp_svc.servicer import SspServicer
from ssp_svc.store.accounts import AccountStore, FileAccountStore, Rng, SqliteAccountStore
from ssp_svc.stream_hub import StreamHub
from svc_common.clock import Clock, SystemClock
from svc_common.grpc_aio import start_adapted_server
from svc_common.grpc_server import CountFamily, Served, probe_listen
from svc_common.stop_signals import StopRequested
from uid2.ssp.v1 import openrtb_pb2, ssp_pb2, ssp_pb2_grpc

_log = structlog.get_logger("ssp")

SERVICE = ssp_pb2.DESCRIPTOR.services_by_name["SspService"]
SERVICE_NAME = SERVICE.full_name


def open_accounts(config: SspConfig, *, rng: Rng, clock: Clock) -> AccountStore:
    if config.data_dir is not None:
        return SqliteAccountStore(config.data_dir, rng=rng, clock=clock)
    if config.publishers_file is not None:
        return FileAccountStore(config.publishers_file, rng=rng)
    # SspConfig refuses this already; checked again because `python -O` drops asserts.
    raise ConfigError("give exactly one of --data-dir and --publishers-file")


# Bid requests a subscriber's stream thread may hold beyond its --stream-buffer (aio_adapter).
STREAM_RELAY_CAPACITY = 4


def _watch_for_loss(accounts: AccountStore, interval_s: float = 1.0) -> Callable[[], None]:
    """Looks at the store every `interval_s` from a thread of its own: the calls that look at
    it (authentication) may not come for hours, and until one does an SSP whose store was
    replaced under it would report SERVING while an admin's disable goes to the new file.
    Returns what stops the thread; run before the store closes."""
    done = threading.Event()

    def run() -> None:
        while not done.wait(interval_s):
            if accounts.check_lost():
                return

    thread = threading.Thread(target=run, name="store-watch", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(timeout=5)

    return stop


def create_server(
    config: SspConfig,
    *,
    clock: Clock | None = None,
    rng: Rng | None = None,
    stop: StopRequested | None = None,
) -> tuple[Served, int]:
    """Starts the SSP. Without a clock or rng the system's are used: this is the edge where
    those defaults belong. If any step fails (the port is taken, the operator refuses), what
    the earlier steps opened (the store, bidder channels, the decryptor's threads) is closed
    before the error propagates. `stop` set during start-up cuts short the wait for the
    operator's opt-out backlog; the caller then stops the server it gets."""
    # Before the decryptor, whose first key fetch waits up to 10 s on an unreachable operator:
    # a taken port is then said at once, as the operator and the publisher say it.
    probe_listen(config.listen)
    clock = clock or SystemClock()
    with ExitStack() as opened:
        accounts = open_accounts(config, rng=os.urandom if rng is None else rng, clock=clock)
        opened.callback(accounts.close)
        hub: StreamHub[openrtb_pb2.BidRequest] = StreamHub(
            capacity=config.stream_buffer, max_subscribers=config.max_subscribers
        )
        pool = BidderPool(config.bidders, config.peer_tls)
        opened.callback(pool.close)
        decryptor = None
        if config.operator and config.operator_api_key:
            decryptor = start_decryptor(
                config.operator,
                config.operator_api_key,
                clock,
                key_refresh_s=config.key_refresh_s,
                early_refresh_min_s=config.early_key_refresh_min_s,
                give_up=stop,
                tls=config.peer_tls,
            )
            opened.callback(decryptor.stop)
        exchange = Exchange(
            checker=decryptor.checker if decryptor else None,
            fan_out=pool.fan_out,
            hub=hub,
            clock=clock,
            tmax_ms=config.tmax_ms,
        )
        servicer = SspServicer(exchange, accounts, hub)

        served = start_adapted_server(
            listen=config.listen,
            domain="ssp.uid2",
            servicer=servicer,
            service=SERVICE,
            add_servicer=ssp_pb2_grpc.add_SspServiceServicer_to_server,
            # An auction waits on its bidders.
            blocking={"SubmitImpression"},
            workers=config.max_workers,
            # Each bid stream holds a thread of its own. Room beyond the hub's cap, so that a
            # stream past it is refused by the hub, with its reason (TOO_MANY_SUBSCRIBERS...),
            # while refused or ending streams still hold theirs.
            max_streams=2 * config.max_subscribers,
            # --stream-buffer is what queues for a subscriber (the hub drops past it, and says
            # how many): the thread may run only a few messages ahead of it.
            relay_capacity=STREAM_RELAY_CAPACITY,
            owns=opened,
            tls=config.tls,
        )
    # Subscribers' streams end first, so a stop never waits out the grace period on them.
    served.before_drain.append(hub.close)
    if decryptor is not None:
        served.readings = decryptor.readings
        served.counts.append(decryptor.verdict_family())
    served.counts.append(
        CountFamily(
            "uid2_ssp_bidder_outcomes",
            "Auctions by bidder and what it answered: bid, no_bid, timeout, error, garbage",
            ("bidder", "outcome"),
            pool.counts,
        )
    )
    if stop is not None and stop.is_set():
        # Stopped during start-up (the opt-out wait given up): neither health nor the log
        # says ready for a server whose caller is about to drain it.
        return served, served.port
    served.set_serving(True)
    served.not_serving_once_lost(accounts.on_lost)
    served.on_stop.append(_watch_for_loss(accounts))
    enabled = accounts.enabled_accounts()
    _log.info(
        "ssp_ready",
        bidders=[b.name for b in config.bidders],
        mode="decrypt" if decryptor else "pass_through",
        tmax_ms=config.tmax_ms,
        accounts=enabled,
    )
    if enabled == 0:
        # A data dir given by mistake (another service's, a typo) starts a new, empty store:
        # every caller would get UNAUTHENTICATED with nothing here saying why.
        _log.warning("no_accounts", hint="add them with `uid2-ssp publisher add`")
    return served, served.port
