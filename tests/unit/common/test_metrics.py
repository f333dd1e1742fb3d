"""Call metrics: one count and one latency per answered call, by method and code; the edge's
hook is off (no observer) unless a process serves /metrics."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry

from svc_common import edge_log, metrics
from svc_common.metrics import RpcMetrics


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
