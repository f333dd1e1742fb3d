"""Call metrics: one count and one latency per answered call, by method and code; the edge's
hook is off (no observer) unless a process serves /metrics."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from svc_common import edge_log, metrics
from svc_common.metrics import RpcMetrics
from svc_common.tls import load_server_tls, requiring_client_certs
from tests.support.tls_certs import make_tls_files


def _calls(registry: CollectorRegistry, method: str, code: str) -> float | None:
    labels = {"service": "svc", "method": method, "code": code}
    return registry.get_sample_value("uid2_rpc_calls_total", labels)


def test_each_call_is_counted_under_its_method_and_code_with_its_latency() -> None:
    registry = CollectorRegistry()
    rpc = RpcMetrics(registry, "svc")
    rpc.observe("/pkg.S/A", "OK", 0.0007)
    rpc.observe("/pkg.S/A", "OK", 0.003)
    rpc.observe("/pkg.S/A", "UNAUTHENTICATED", 0.0001)
    assert _calls(registry, "/pkg.S/A", "OK") == 2
    assert _calls(registry, "/pkg.S/A", "UNAUTHENTICATED") == 1
    latency = {"service": "svc", "method": "/pkg.S/A"}
    assert registry.get_sample_value("uid2_rpc_latency_seconds_count", latency) == 3
    bucket = {**latency, "le": "0.001"}
    assert registry.get_sample_value("uid2_rpc_latency_seconds_bucket", bucket) == 2


def test_the_edge_reports_each_ended_call_while_metrics_are_served() -> None:
    server = metrics.start("127.0.0.1:0", "svc")
    try:
        start = edge_log.begin_call("/pkg.S/B", "rid-1")
        edge_log.end_call(start, "INVALID_ARGUMENT", "BAD")
        edge_log.mark_streaming("/pkg.S/Watch")  # counted; its length is no latency
        edge_log.end_call(edge_log.begin_call("/pkg.S/Watch", "rid-3"), "CANCELLED", "")
        edge_log.observe("/v2/token/generate", "200", 0.001)
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    finally:
        server.stop()
    assert 'code="INVALID_ARGUMENT",method="/pkg.S/B",service="svc"} 1.0' in text
    assert 'code="200",method="/v2/token/generate",service="svc"} 1.0' in text
    assert 'code="CANCELLED",method="/pkg.S/Watch",service="svc"} 1.0' in text
    assert 'latency_seconds_count{method="/pkg.S/Watch"' not in text
    assert "_created" not in text
    # Stopped: the hook is off again, and a call ends as before.
    assert edge_log._observer is None
    edge_log.end_call(edge_log.begin_call("/pkg.S/B", "rid-2"), "OK", "")


def test_idle_connections_cannot_pile_up_threads() -> None:
    """Plain /metrics had no timeout nor bound: 300 connections that sent half a request line
    held 300 threads for good."""
    server = metrics.start("127.0.0.1:0", "svc")
    idle: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(metrics.MAX_SCRAPE_CONNECTIONS + 20):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /metr")
            idle.append(sock)
        time.sleep(0.3)
        assert threading.active_count() - before <= metrics.MAX_SCRAPE_CONNECTIONS
        for sock in idle:
            sock.close()
        idle.clear()
        url = f"http://127.0.0.1:{server.port}/metrics"
        # Freed as their peers went: a scrape is answered again.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert "process_" in _scrape(url, None)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_connections_trickling_bytes_cannot_hold_the_scrape_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A byte every few seconds beats a per-read timeout: each connection has a lifetime too.
    monkeypatch.setattr(metrics, "CONNECTION_LIFETIME_S", 1.0)
    server = metrics.start("127.0.0.1:0", "svc")
    url = f"http://127.0.0.1:{server.port}/metrics"
    held = [
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
        for _ in range(metrics.MAX_SCRAPE_CONNECTIONS)
    ]
    try:
        deadline = time.monotonic() + 6
        while True:
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.sendall(b"G")  # still "sending its request"
            try:
                assert "process_" in _scrape(url, None)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the trickling connections held every slot"
                time.sleep(0.2)
    finally:
        for sock in held:
            sock.close()
        server.stop()


def _scrape(url: str, context: ssl.SSLContext | None) -> str:
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:  # noqa: S310  # a test's own 127.0.0.1 URL
        return str(reply.read().decode())


def test_metrics_over_tls_answer_only_clients_that_trust_the_certificate(
    tmp_path: Path,
) -> None:
    files = make_tls_files(tmp_path / "tls")
    server = metrics.start("127.0.0.1:0", "svc", load_server_tls(str(files.cert), str(files.key)))
    try:
        url = f"https://127.0.0.1:{server.port}/metrics"
        # A scraper that connects and says nothing does not stall the others.
        with socket.create_connection(("127.0.0.1", server.port)):
            assert "process_" in _scrape(url, ssl.create_default_context(cafile=files.ca))
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: refused
            _scrape(f"http://127.0.0.1:{server.port}/metrics", None)
        with pytest.raises(urllib.error.URLError):  # a certificate it does not trust
            _scrape(url, ssl.create_default_context(cafile=make_tls_files(tmp_path / "o").ca))
    finally:
        server.stop()


def test_metrics_over_tls_with_client_cas_answer_only_scrapers_with_a_certificate(
    tmp_path: Path,
) -> None:
    files = make_tls_files(tmp_path / "tls")
    tls = requiring_client_certs(load_server_tls(str(files.cert), str(files.key)), str(files.ca))
    server = metrics.start("127.0.0.1:0", "svc", tls)
    try:
        url = f"https://127.0.0.1:{server.port}/metrics"
        anonymous = ssl.create_default_context(cafile=files.ca)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _scrape(url, anonymous)
        scraper = ssl.create_default_context(cafile=files.ca)
        scraper.load_cert_chain(files.cert, files.key)
        assert "process_" in _scrape(url, scraper)
    finally:
        server.stop()


def _status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310  # a test's own 127.0.0.1 URL
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_healthz_says_the_services_health_and_other_paths_are_not_found() -> None:
    """Deployment review: every path answered 200 with the metrics, so a probe of "/" or
    "/healthz" said nothing, and a gRPC health probe needs a client certificate under
    --client-ca (and Kubernetes' own speaks no TLS)."""
    server = metrics.start("127.0.0.1:0", "svc")
    base = f"http://127.0.0.1:{server.port}"
    serving = False
    try:
        assert _status(base + "/healthz") == (503, "STARTING\n")
        server.serve_health(lambda: serving)
        assert _status(base + "/healthz") == (503, "NOT_SERVING\n")
        serving = True
        assert _status(base + "/healthz") == (200, "SERVING\n")
        assert _status(base + "/metrics")[0] == 200
        for other in ("/", "/ready", "/metrics/x"):
            assert _status(base + other)[0] == 404, other
    finally:
        server.stop()
