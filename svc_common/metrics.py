"""Prometheus metrics for a serving process: `--metrics-listen HOST:PORT` serves /metrics.

What is measured is what an on-call engineer alerts on, and nothing that names a user:
- `uid2_rpc_calls_total{service,method,code}`: every gRPC call the edge answered (the same calls
  as the per-call log lines), and the operator's HTTP API requests (method = the path);
- `uid2_rpc_latency_seconds{service,method}`: their latency;
- the process's CPU, memory, file descriptors and garbage collections (prometheus_client's own
  collectors).
Labels are method names, status codes and the service name: never DII, tokens, keys or sites.

Off unless asked for: with no listener, the edge's per-call hook is one `None` check. Plain HTTP
unless `--metrics-tls`: then the service's own certificate (renewals followed as on its other
ports) and, with `--client-ca`, only scrapers presenting a certificate those CAs signed."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from svc_common import edge_log
from svc_common.cli_common import MetricsSettings
from svc_common.fd_limit import ensure_open_files_limit
from svc_common.grpc_server import CountFamily
from svc_common.logging import write_lifecycle_line
from svc_common.settings import split_host_port
from svc_common.stop_signals import wait_for_signal
from svc_common.tls import ServerTls
from svc_common.tls_reload import ReloadingServerTls

# Milliseconds to seconds: a healthy call takes about a millisecond, a slow peer up to seconds.
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class RpcMetrics:
    """Call counts and latencies, by method and status code, in `registry`."""

    registry: CollectorRegistry
    service: str
    _children: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._calls = Counter(
            "uid2_rpc_calls",
            "Calls answered, by method and status code",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "uid2_rpc_latency_seconds",
            "Time from a call's arrival to its answer",
            ["service", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, code: str, seconds: float | None) -> None:
        """Counts the call; its latency too unless `seconds` is None (a server stream, which
        gets no latency series at all)."""
        # Label children cached: .labels() takes a lock and builds a key on every call.
        pair = self._children.get((method, code))
        if pair is None:
            with self._lock:
                latency = None if seconds is None else self._latency.labels(self.service, method)
                pair = (self._calls.labels(self.service, method, code), latency)
                self._children[(method, code)] = pair
        pair[0].inc()
        if pair[1] is not None and seconds is not None:
            pair[1].observe(seconds)


Readings = Callable[[], Mapping[str, float]]


class _ReadingsCollector:
    """Gauges read at scrape time from a service's own state (`read`: name → value), so the
    service's code knows nothing of Prometheus and pays nothing between scrapes."""

    def __init__(self, prefix: str, service: str, read: Readings) -> None:
        self._prefix, self._service, self._read = prefix, service, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in self._read().items():
            family = GaugeMetricFamily(self._prefix + name, name, labels=["service"])
            family.add_metric([self._service], value)
            yield family


class _CountsCollector:
    """One CountFamily, read at scrape time."""

    def __init__(self, family: CountFamily, service: str) -> None:
        self._family, self._service = family, service

    def collect(self) -> Iterator[CounterMetricFamily]:
        f = self._family
        counter = CounterMetricFamily(f.name, f.doc, labels=["service", *f.labels])
        for values, count in f.read().items():
            counter.add_metric([self._service, *values], count)
        yield counter


@dataclass
class MetricsServer:
    """The /metrics listener of one process."""

    port: int
    _server: Any
    _registry: CollectorRegistry
    _service: str
    _health: _Health

    def serve_health(self, serving: Callable[[], bool]) -> None:
        """/healthz answers `serving()` from now on (a started server's `Served.serving`)."""
        self._health.serving = serving

    def watch(self, prefix: str, read: Readings | None) -> None:
        """Adds `prefix` + each name `read()` returns, as a gauge, to every scrape (a started
        server's `Served.readings`; None when the service has nothing to show)."""
        if read is not None:
            self._registry.register(_ReadingsCollector(prefix, self._service, read))

    def count(self, families: Iterable[CountFamily]) -> None:
        """Adds a started server's own counters (`Served.counts`) to every scrape."""
        for family in families:
            self._registry.register(_CountsCollector(family, self._service))

    def stop(self) -> None:
        edge_log.observe_calls(None)
        self._server.shutdown()
        self._server.server_close()


def start(listen: str, service: str, tls: ServerTls | None = None) -> MetricsServer:
    """Serves /metrics on `listen` (HOST:PORT; port 0 picks one), over `tls` when given, and
    starts counting calls."""
    host, port = split_host_port(listen)
    # No *_created series beside every counter: noise for alerts.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    rpc = RpcMetrics(registry, service)
    health = _Health()
    try:
        server = _start_server(host, port, _routes(make_wsgi_app(registry), health), tls)
    except OSError as exc:  # named as the gRPC and HTTP listeners' are: three ports to tell apart
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot listen on {listen} (metrics): {reason}") from None
    edge_log.observe_calls(rpc.observe)
    return MetricsServer(int(server.server_port), server, registry, service, health)


# Scrapes served at once: past it a connection is closed at once. With the handler's timeout
# and a whole connection's (a byte every 9 s would beat the timeout alone), idle or slow
# connections cannot pile up threads (300 idle ones held 300 threads for good), nor hold the
# slots long: a scrape takes milliseconds.
MAX_SCRAPE_CONNECTIONS = 32
CONNECTION_LIFETIME_S = 15.0


class _QuietHandler(WSGIRequestHandler):
    # A scraper that connects and sends nothing must not hold a thread for ever (with TLS the
    # handshake runs here, in the request's thread, on its first read).
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # the base's name
        """No access log: the scrapes would drown the service's own lines."""

    def get_stderr(self) -> io.StringIO:
        """Where wsgiref writes the traceback of a response that failed: a scraper resetting
        its TLS connection mid-response raises an SSLError wsgiref does not take for a client
        gone, and its traceback would break the service's JSON log."""
        return io.StringIO()


class _Health:
    """What /healthz says: the gRPC health of the service (`Served.serving`) once it started."""

    def __init__(self) -> None:
        self.serving: Callable[[], bool] | None = None

    def status(self) -> str:
        if self.serving is None:
            return "STARTING"
        return "SERVING" if self.serving() else "NOT_SERVING"


def _routes(metrics_app: Any, health: _Health) -> Any:
    """/metrics, /healthz (200 SERVING, else 503 and the status: a probe over plain HTTP,
    without the client certificate --client-ca asks of the gRPC port's health callers), and
    404 for any other path, where every path answered the metrics before (a probe of "/" then
    read as healthy)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            status = health.status()
            code = "200 OK" if status == "SERVING" else "503 Service Unavailable"
            start_response(code, [("Content-Type", "text/plain; charset=utf-8")])
            return [status.encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: /metrics or /healthz\n"]

    return app


def _start_server(host: str, port: int, app: Any, tls: ServerTls | None) -> ThreadingWSGIServer:
    """prometheus_client's own WSGI app and server class, with a timeout on each connection, a
    bound on them, and (`tls`) the TLS the service's other ports have (its certificate followed
    through renewals). The listening socket is wrapped without a handshake on accept: done
    there, one scraper that connects and says nothing would stall every other scrape."""
    slots = threading.BoundedSemaphore(MAX_SCRAPE_CONNECTIONS)
    # connection -> when it is closed, done or not (the reaper below)
    open_until: dict[Any, float] = {}
    guard = threading.Lock()

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def process_request(self, request: Any, client_address: Any) -> None:
            if not slots.acquire(blocking=False):
                self.shutdown_request(request)  # full: the scraper tries again next interval
                return
            with guard:
                open_until[request] = time.monotonic() + CONNECTION_LIFETIME_S
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._forget(request)
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._forget(request)

        def _forget(self, request: Any) -> None:
            with guard:
                if open_until.pop(request, None) is None:
                    return
            slots.release()

        def handle_error(self, request: Any, client_address: Any) -> None:
            """A handshake that fails (a plain-HTTP scraper, one without a certificate the CAs
            signed) is the scraper's to see: socketserver would print a traceback into the
            service's JSON log."""

    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    if tls is not None:
        context = ReloadingServerTls(tls, listener="metrics").ssl_context()
        httpd.socket = context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()

    def reap() -> None:
        while httpd.socket.fileno() != -1:  # until the server is closed
            time.sleep(min(1.0, CONNECTION_LIFETIME_S / 4))
            now = time.monotonic()
            with guard:
                late = [conn for conn, until in open_until.items() if until <= now]
            for conn in late:
                # Its thread's read then fails and the thread ends, freeing the slot.
                with contextlib.suppress(OSError):
                    # The plain socket's: an SSLSocket's own drops its TLS state first, and a
                    # reply written in between would go out in clear text.
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)

    threading.Thread(target=reap, name="metrics-reaper", daemon=True).start()
    return httpd


@contextmanager
def serving(at: MetricsSettings | None, service: str) -> Iterator[MetricsServer | None]:
    """/metrics for the with-block when `at` is set (else None)."""
    if at is None:
        yield None
        return
    server = start(at.listen, service, at.tls)
    try:
        yield server
    finally:
        server.stop()


def log_fields(server: MetricsServer | None) -> dict[str, int]:
    """What the "serving" log line adds: {"metrics_port": N}, or nothing."""
    return {} if server is None else {"metrics_port": server.port}


def serve_until_stopped(
    service: str,
    metrics_at: MetricsSettings | None,
    stop: Any,
    start: Callable[[], tuple[Any, int]],
    readings_prefix: str,
    fields: Mapping[str, Any],
    started_fields: Callable[[Any], Mapping[str, Any]] | None = None,
) -> None:
    """A `serve` command's life once configured: /metrics if asked for, `start()` the server
    (served, port) and show its readings under `readings_prefix`, one "serving" log line with
    `fields` and `started_fields(served)` (none when the stop came during start-up), then wait
    for SIGINT/SIGTERM (`stop`, from catch_stop_signals), stop the server (its drain) and log
    "stopped". The "serving" and "stopped" lines are written whatever the log level."""
    log = structlog.get_logger(service)
    files = ensure_open_files_limit()
    with serving(metrics_at, service) as metrics:
        served, port = start()
        if metrics is not None:
            metrics.serve_health(lambda: served.serving)
            metrics.watch(readings_prefix, served.readings)
            metrics.count(served.counts)
        # A stop that came during start-up: a supervisor watching for "serving" must not see a
        # service that is already stopping. The wait returns at once, and the drain follows.
        if not stop.is_set():
            more = {} if started_fields is None else started_fields(served)
            write_lifecycle_line(
                "serving",
                port=port,
                **fields,
                **more,
                **log_fields(metrics),
                open_files_limit=files,
            )
        try:
            wait_for_signal(stop)
        finally:
            log.info("stopping")
            served.stop()
    write_lifecycle_line("stopped")
