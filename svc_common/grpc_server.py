"""What every service's gRPC server shares, whatever builds it (`grpc_aio`): the transport's
options (keepalive, connection limits), port binding, and `Served`, the started server's handle,
whose stop drains gracefully."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from grpc_health.v1 import health_pb2

from svc_common.fd_limit import open_files_limit
from svc_common.grpc_edge import TRANSPORT_MAX_BYTES
from svc_common.sensitive import shown
from svc_common.settings import SettingError, split_host_port
from svc_common.tls import ServerTls
from svc_common.tls_reload import ReloadingServerTls

# Keepalive: a client whose host vanished without closing its connection (a crash, a cut
# network) would otherwise hold its streams, and their capped slots (WatchOptOuts, the SSP's
# bid stream), until TCP gives up, which takes hours. The server pings a connection with calls
# open after this long without data, and drops it when the ping goes unanswered.
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
# How often a client may ping a connection on which the server sends nothing (a quiet stream):
# the decryptors ping every 20 s (bidstream.decryptor.operator_client). gRPC's default, 5 min,
# answers faster pings with GOAWAY (too_many_pings), which would break the stream each time.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
# Connections a gRPC port holds at once, and how long one may take to start talking HTTP/2
# (its TLS handshake included). Without them, connections that send nothing were held for
# gRPC's default 120 s, without bound in number: as many as the process's open-files limit,
# opened with no API key, took every listener of the process down (the HTTP API's included,
# which has its own cap: operator_svc.http.connections). A quarter of the files at most: the
# HTTP API may take half, and the stores, logs and peers' channels need the rest.
MAX_CONNECTIONS = 4096
HANDSHAKE_TIMEOUT_MS = 10_000
# A connection with no call open for this long is closed (GOAWAY; a client reconnects at its
# next call). Without it a connection that finished its HTTP/2 handshake and then went quiet was
# held for good: keepalive pings only connections with calls open, and 4,096 such connections,
# opened with no API key, locked every new caller out of the port for as long as they stayed.
MAX_CONNECTION_IDLE_MS = 30_000
# Calls one connection may have open at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS). Without
# it, on grpcio's aio server, one client starting calls and cancelling them at once, thousands a
# second with no API key, made a sixth to a half of other clients' calls end CANCELLED. Well
# above what a client holds: past it the server refuses the stream, and grpcio's client does not
# queue it but fails it UNAVAILABLE (at 100, a quarter of a 200-call batch on one channel).
MAX_CONCURRENT_STREAMS = 1000
# A connection lives this long, then gets GOAWAY: new calls go to a new connection, and the calls
# open on it get the grace to end before it closes (a stream that lasts, WatchOptOuts or a bid
# stream, then ends UNAVAILABLE and its reader reconnects, resuming as after any outage). Without
# it one call per connection that never sent its message held the connection, and its slot of
# the 4,096, for good (the idle limit counts only connections with no call open).
MAX_CONNECTION_AGE_MS = 10 * 60_000
MAX_CONNECTION_AGE_GRACE_MS = 30_000


def server_options() -> list[tuple[str, int]]:
    """The channel options of every server, sync and aio."""
    return [
        ("grpc.max_receive_message_length", TRANSPORT_MAX_BYTES),
        # No SO_REUSEPORT (grpc's default turns it on): a second server started on a port in
        # use must fail, not silently take half the connections.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        # The documented name, and the one grpc 1.85 actually times the ping out by (without
        # it a frozen peer was never dropped: tests/integration/operator/test_keepalive.py).
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # On a server this name is the interval it accepts (GRPC_ARG_HTTP2_MIN_RECV_PING_...).
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.max_allowed_incoming_connections", min(MAX_CONNECTIONS, open_files_limit() // 4)),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]


@dataclass(frozen=True)
class CountFamily:
    """A counter a service keeps itself, shown on /metrics as `<name>_total` with a
    `service` label and `labels`; `read` gives label values -> count at each scrape."""

    name: str
    doc: str
    labels: tuple[str, ...]
    read: Callable[[], Mapping[tuple[str, ...], float]]


@dataclass
class Served:
    """A started server with its bound port and health servicer. The server is grpc.aio's, on
    an event loop in a background thread (`grpc_aio.start_aio_server`), so callers need not be
    async."""

    server: Any
    port: int
    health: Any
    service_names: tuple[str, ...]
    # Run first on stop, before draining: ends long-lived streams so the drain need not wait.
    before_drain: list[Callable[[], None]] = field(default_factory=list)
    # Run last on stop: the service's own clean-up (background threads, stores), newest first.
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    # Set by the first `stop`: a second one (a test's fixture after a failed start, a caller's
    # `finally`) returns at once instead of touching a server (or event loop) already gone.
    stopped: bool = field(default=False, init=False, repr=False)
    # The service's own readings for /metrics (name → value), when it has any to show.
    readings: Callable[[], Mapping[str, float]] | None = field(default=None, init=False)
    # Its own counters for /metrics, labelled.
    counts: list[CountFamily] = field(default_factory=list, init=False)
    # What its gRPC health says of it (for /healthz on the /metrics port).
    serving: bool = field(default=False, init=False)

    def set_serving(self, serving: bool) -> None:
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            self._set_health(name, status)

    def not_serving_once_lost(self, on_lost: Callable[[Callable[[], None]], None]) -> None:
        """Reports NOT_SERVING once the service's store is found lost (`on_lost` registers the
        callback: a store's StoreWatch.on_lost). Set from a thread of its own: the finding may
        come on the server's own event loop, which setting the health of an aio server waits
        on."""

        def report() -> None:
            if not self.stopped:
                self.set_serving(False)

        on_lost(lambda: threading.Thread(target=report, name="store-lost", daemon=True).start())

    def stop(self, grace_s: float = 5.0) -> None:
        """Ends streams, refuses new calls, lets in-flight ones finish for up to `grace_s`,
        then runs the service's clean-up. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        for callback in self.before_drain:
            callback()
        self.before_drain.clear()
        self.set_serving(False)
        self._stop_server(grace_s)
        for callback in reversed(self.on_stop):
            callback()
        self.on_stop.clear()

    def _on_loop(self, coro: Any) -> Any:
        if self.loop is None:
            raise RuntimeError("the server's event loop is gone")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def _set_health(self, name: str, status: int) -> None:
        self._on_loop(self.health.set(name, status))

    def _stop_server(self, grace_s: float) -> None:
        if self.loop is None or self.loop.is_closed():
            return
        self._on_loop(self.server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(timeout=10)


def probe_listen(listen: str) -> None:
    """OSError saying why `listen` (HOST:PORT) cannot be bound, found with plain sockets
    before grpc tries: grpc core logs its own multi-line complaint to stderr on a failed
    bind, and a CLI mistake is to be one line. Mirrors grpc: SO_REUSEADDR, and fine when at
    least one of the addresses the host resolves to binds. A race with another process
    remains; `bind_port` still reports it, with core's lines before it."""
    try:
        host, port = split_host_port(listen)
    except SettingError:
        raise OSError(f"cannot listen on {listen}: not HOST:PORT") from None
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise OSError(
            f"cannot listen on {shown(listen, numbers=False)}: "
            f"{shown(host, numbers=False)} does not resolve"
        ) from exc
    problems: list[str] = []
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return
            except OSError as exc:
                problems.append(exc.strerror or type(exc).__name__)
    raise OSError(f"cannot listen on {listen}: {problems[0] if problems else 'no address'}")


def bind_port(server: Any, listen: str, tls: ServerTls | None = None) -> int:
    """Binds `listen` (HOST:PORT) on a grpc.aio server, with TLS when `tls` is given; the
    bound port. OSError, which the CLIs report in one line with exit 2, when the address is
    taken or cannot be bound."""
    listen = listen.strip()  # as split_host_port reads it: " 127.0.0.1:0" is valid there
    probe_listen(listen)
    try:
        if tls is None:
            port = int(server.add_insecure_port(listen))
        else:
            credentials = ReloadingServerTls(tls).grpc_credentials()
            port = int(server.add_secure_port(listen, credentials))
    except RuntimeError:  # grpc's "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {listen}: address in use or not available")
    return port
