"""Publisher benchmarks (issue 4), against a real in-process operator sharing a hand-moved clock:

- GetAdvertisingToken p50/p99 over gRPC for a stored identity that is not due (a lookup) and
  for one that is due (one refresh with the operator);
- background refresh of 10,000 due identities: wall time and peak concurrency.

Writes bench/results/publisher.json and returns the same dict."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from bench.common import add_client, cli, latency_summary, write_results
from operator_svc.config import OperatorConfig
from operator_svc.server import create_server as create_operator
from publisher_svc.config import PublisherConfig
from publisher_svc.model import DiiKind, HashedDii, PrivacySettings
from publisher_svc.operator_client import OperatorClient
from publisher_svc.refresher import Refresher
from publisher_svc.server import start
from svc_common.clock import ManualClock
from svc_common.logging import configure_logging
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2 as pb
from uid2.publisher.v1 import publisher_pb2_grpc
from uid2_crypto.identity import sha256_b64

HOUR_MS = 3_600_000
LOOKUPS = 3000
DUE_CALLS = 1000
BACKGROUND = 10_000
WORKERS = 8


def run() -> dict[str, Any]:
    configure_logging("WARNING", service="publisher-bench")
    with tempfile.TemporaryDirectory(prefix="pubbench-") as tmp:
        root = Path(tmp)
        d = str(root / "op")
        os.mkdir(d)
        cli("uid2-operator", "init", "--data-dir", d)
        cli("uid2-operator", "site", "add", "--data-dir", d, "--site-id", "101", "--name", "pub")
        key = add_client(d, 101, "g", "GENERATOR")["api_key"]
        clock = ManualClock(time.time_ns() // 1_000_000)
        op_served, op_port = create_operator(
            OperatorConfig(data_dir=Path(d), listen="127.0.0.1:0"), clock=clock
        )
        config = PublisherConfig(
            listen="127.0.0.1:0",
            data_dir=str(root / "pub"),
            operator_address=f"127.0.0.1:{op_port}",
            operator_api_key=key,
            site_id=101,
            ssp_address="127.0.0.1:1",  # ServeAd is not measured here
            ssp_api_key="unused",
            background_refresh=False,
        )
        rt = start(config, clock=clock)
        channel = grpc.insecure_channel(f"127.0.0.1:{rt.served.port}")
        stub = publisher_pb2_grpc.PublisherServiceStub(channel)
        accepted = operator_pb2.PrivacySettings(transparency_notice_accepted=True)
        ok = pb.LoginRequest(privacy_settings=accepted)
        try:
            # -- not due: a lookup ------------------------------------------------------------
            req = pb.LoginRequest()
            req.CopyFrom(ok)
            req.user_id, req.email = "lookup", "lookup@example.com"
            stub.Login(req)
            get = pb.GetAdvertisingTokenRequest(user_id="lookup")
            for _ in range(200):  # warm up
                stub.GetAdvertisingToken(get)
            lookups = []
            for _ in range(LOOKUPS):
                t = time.perf_counter()
                r = stub.GetAdvertisingToken(get)
                lookups.append((time.perf_counter() - t) * 1000)
                assert not r.refreshed
            # -- due: one refresh each --------------------------------------------------------
            for i in range(DUE_CALLS):
                req.user_id, req.email = f"due{i}", f"due{i}@example.com"
                stub.Login(req)
            clock.advance(HOUR_MS)
            due = []
            for i in range(DUE_CALLS):
                g = pb.GetAdvertisingTokenRequest(user_id=f"due{i}")
                t = time.perf_counter()
                r = stub.GetAdvertisingToken(g)
                due.append((time.perf_counter() - t) * 1000)
                assert r.refreshed
            # -- background refresh of 10,000 due identities ---------------------------------
            client = OperatorClient(config.operator_address, key, timeout_s=10)
            privacy = PrivacySettings(True)
            store = rt.publisher.store
            for i in range(DUE_CALLS):  # leave exactly the 10,000 below to the refresher
                store.delete(f"due{i}")
            store.delete("lookup")
            t_gen = time.perf_counter()

            def seed(i: int) -> None:
                dii = HashedDii(DiiKind.EMAIL, sha256_b64(f"bg{i}@example.com"))
                res = client.generate(dii, privacy, 0)
                assert res.identity is not None
                store.put_unless_site_optout(f"bg{i}", dii.key, res.identity, clock.now_ms())

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(seed, range(BACKGROUND)))
            seed_s = time.perf_counter() - t_gen
            clock.advance(HOUR_MS)
            due_now = len(store.due(clock.now_ms(), BACKGROUND + DUE_CALLS + 10))
            refresher = Refresher(rt.publisher, workers=WORKERS, batch_size=512)
            t_bg = time.perf_counter()
            while refresher.run_once():
                pass
            bg_s = time.perf_counter() - t_bg
            refresher.stop()
            client.close()
            stats = refresher.stats
            assert stats.refreshed >= BACKGROUND, stats
        finally:
            channel.close()
            rt.served.stop(0)
            op_served.stop(0)

    result: dict[str, Any] = {
        "what": "publisher GetAdvertisingToken latency over loopback gRPC, and background "
        "refresh, against a real in-process operator (same process, 2 shared cores)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "store": "SQLite WAL, synchronous=FULL, in a temporary directory",
        "get_advertising_token_not_due": latency_summary(lookups),
        "get_advertising_token_due_one_refresh": latency_summary(due),
        "background_refresh": {
            "identities_due": due_now,
            "refreshed": stats.refreshed,
            "deferred": stats.deferred,
            "workers": WORKERS,
            "seconds": round(bg_s, 2),
            "per_second": round(stats.refreshed / bg_s, 1),
            "peak_concurrency": stats.peak_in_flight,
            "seeding_seconds": round(seed_s, 2),
        },
    }
    write_results("publisher", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
