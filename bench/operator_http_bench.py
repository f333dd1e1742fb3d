"""The official HTTP API beside gRPC GenerateToken, against one operator process, same run.

One `uid2-operator serve --listen ... --http-listen ...` process serves both front doors. One
asyncio client process drives each in turn with the same closed loop: `in_flight` workers each
keep one call outstanding for a fixed duration after a warm-up. HTTP: aiohttp ClientSession
(keep-alive), a fresh envelope per request (uid2_crypto.envelope, current timestamp, random
nonce and IV), the answer decrypted and its nonce checked; gRPC: grpc.aio GenerateToken. Both
use the same 1,000 e-mail addresses. Figures: throughput (calls/s), p50/p99 latency (ms), and
HTTP/gRPC throughput ratio per concurrency. Both front doors log one line per call (INFO), as
in production.

Run: `make bench` or `.venv/bin/python -m bench.operator_http_bench`.
Writes bench/results/operator_http.json."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import add_client, cli, wait_serving, write_results

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DURATION_S = float(os.environ.get("OPERATOR_HTTP_BENCH_SECONDS", "3"))
WARMUP_S = 0.5
CONCURRENCY = (1, 16)
EMAILS = [f"bench-user-{i}@example.com" for i in range(1000)]


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 3)


async def _closed_loop(
    call: Callable[[int], Awaitable[None]], in_flight: int, duration_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    record = False
    stop = False
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        while not stop:
            i = counter
            counter += 1
            t = time.perf_counter()
            try:
                await call(i)
            except Exception:
                errors += 1
                continue
            if record:
                latencies.append((time.perf_counter() - t) * 1000)

    tasks = [asyncio.create_task(worker()) for _ in range(in_flight)]
    await asyncio.sleep(WARMUP_S)
    record = True
    started = time.perf_counter()
    await asyncio.sleep(duration_s)
    record = False
    elapsed = time.perf_counter() - started
    stop = True
    await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "in_flight": in_flight,
        "calls": len(latencies),
        "errors": errors,
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
    }


async def _drive(grpc_port: int, http_port: int, api_key: str, secret_b64: str) -> dict[str, Any]:
    import aiohttp
    import grpc

    from uid2.operator.v1 import operator_pb2 as pb
    from uid2.operator.v1 import operator_pb2_grpc as pbg
    from uid2_crypto.envelope import decrypt_response, encrypt_request

    secret = base64.b64decode(secret_b64)
    url = f"http://127.0.0.1:{http_port}/v2/token/generate"
    # aiohttp labels a bytes body application/octet-stream; the SDKs send base64 text.
    headers = {"Authorization": "Bearer " + api_key, "Content-Type": "text/plain"}
    bodies = [json.dumps({"email": e}).encode() for e in EMAILS]
    metadata = (("authorization", "Bearer " + api_key),)
    privacy = pb.PrivacySettings(transparency_notice_accepted=True)
    requests = [
        pb.GenerateTokenRequest(dii=pb.Dii(email=e), privacy_settings=privacy) for e in EMAILS
    ]
    out: dict[str, Any] = {"http": [], "grpc": []}

    connector = aiohttp.TCPConnector(limit=max(CONCURRENCY))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def http_call(i: int) -> None:
            nonce = os.urandom(8)
            envelope = encrypt_request(
                secret,
                bodies[i % len(bodies)],
                now_ms=time.time_ns() // 1_000_000,
                nonce=nonce,
                iv=os.urandom(12),
            )
            async with session.post(url, data=base64.b64encode(envelope), headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
            _, echoed, plain = decrypt_response(secret, base64.b64decode(data))
            if echoed != nonce or b'"success"' not in plain:
                raise RuntimeError("bad answer")

        for n in CONCURRENCY:
            out["http"].append(await _closed_loop(http_call, n, DURATION_S))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pbg.OperatorServiceStub(channel)

        async def grpc_call(i: int) -> None:
            resp = await stub.GenerateToken(
                requests[i % len(requests)], metadata=metadata, timeout=10
            )
            if resp.status != pb.GENERATE_TOKEN_STATUS_SUCCESS:
                raise RuntimeError("bad answer")

        for n in CONCURRENCY:
            out["grpc"].append(await _closed_loop(grpc_call, n, DURATION_S))
    return out


def run() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    results: dict[str, Any] = {"duration_s": DURATION_S, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ophttpbench") as tmp:
        data = Path(tmp) / "data"
        cli("uid2-operator", "init", "--data-dir", str(data))
        client = add_client(data, 10, "bench", "GENERATOR")
        log_path = Path(tmp) / "operator.log"
        with log_path.open("w") as log_file:
            op = subprocess.Popen(
                [
                    str(BIN / "uid2-operator"),
                    "serve",
                    "--data-dir",
                    str(data),
                    "--listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        try:
            serving = wait_serving(log_path)
            measured = asyncio.run(
                _drive(
                    int(serving["port"]),
                    int(serving["http_port"]),
                    client["api_key"],
                    client["secret"],
                )
            )
        finally:
            op.terminate()
            op.wait(15)
    results.update(measured)
    results["http_over_grpc_throughput"] = {
        str(h["in_flight"]): round(h["throughput_per_s"] / g["throughput_per_s"], 3)
        for h, g in zip(measured["http"], measured["grpc"], strict=True)
        if g["throughput_per_s"]
    }
    write_results("operator_http", results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run()
