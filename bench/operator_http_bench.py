"""The official HTTP API beside gRPC GenerateToken, against one operator process, same run.

One `uid2-operator serve --listen ... --http-listen ...` process serves both front doors. One
asyncio client process drives each in turn with the same closed loop: `in_flight` workers each
keep one call outstanding for a fixed duration after a warm-up. HTTP: aiohttp ClientSession
(keep-alive), a fresh envelope per request (uid2_crypto.envelope, current timestamp, random
nonce and IV), the answer decrypted and its nonce checked; gRPC: grpc.aio GenerateToken. Both
use the same 1,000 e-mail addresses. Client-side generation (`client_generate`) is driven the
same way over HTTP, cycling through 1,000 page requests built before the run (a page's own
ECDH and encryption are the browser's cost, not the operator's; the operator does its full work
for every one: ECDH, decryption, the origin check, the token). Figures: throughput (calls/s),
p50/p99 latency (ms), HTTP/gRPC and client-generate/generate throughput ratios per concurrency.
Both front doors log one line per call (INFO), as in production.

Run: `make bench` or `.venv/bin/python -m bench.operator_http_bench`.
Writes bench/results/operator_http.json."""

from __future__ import annotations

import asyncio
import base64
import hashlib
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
PAGE_DOMAIN = "bench.example.com"


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


def _page_requests(public_key: str, subscription_id: str) -> list[tuple[bytes, bytes]]:
    """(body, shared secret) of a page's client-generate request per e-mail address."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    server = serialization.load_der_public_key(base64.b64decode(public_key[9:]))
    assert isinstance(server, ec.EllipticCurvePublicKey)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    out = []
    for email in EMAILS:
        page = ec.generate_private_key(ec.SECP256R1())
        secret = page.exchange(ec.ECDH(), server)
        now, iv = time.time_ns() // 1_000_000, os.urandom(12)
        digest = base64.b64encode(hashlib.sha256(email.encode()).digest()).decode()
        sealed = AESGCM(secret).encrypt(
            iv, json.dumps({"email_hash": digest}).encode(), f"[{now}]".encode()
        )
        body = {
            "payload": base64.b64encode(sealed).decode(),
            "iv": base64.b64encode(iv).decode(),
            "public_key": base64.b64encode(
                page.public_key().public_bytes(serialization.Encoding.DER, spki)
            ).decode(),
            "timestamp": now,
            "subscription_id": subscription_id,
        }
        out.append((json.dumps(body).encode(), secret))
    return out


async def _drive(
    grpc_port: int, http_port: int, api_key: str, secret_b64: str, keypair: dict[str, Any]
) -> dict[str, Any]:
    import aiohttp
    import grpc
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
    out: dict[str, Any] = {"http": [], "grpc": [], "client_generate": []}
    pages = _page_requests(keypair["public_key"], keypair["subscription_id"])
    cstg_url = f"http://127.0.0.1:{http_port}/v2/token/client-generate"
    cstg_headers = {"Origin": "https://" + PAGE_DOMAIN, "Content-Type": "text/plain"}

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

        async def cstg_call(i: int) -> None:
            body, page_secret = pages[i % len(pages)]
            async with session.post(cstg_url, data=body, headers=cstg_headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
            sealed = base64.b64decode(data)
            plain = AESGCM(page_secret).decrypt(sealed[:12], sealed[12:], None)
            if b'"success"' not in plain:
                raise RuntimeError("bad answer")

        for n in CONCURRENCY:
            out["http"].append(await _closed_loop(http_call, n, DURATION_S))
            out["client_generate"].append(await _closed_loop(cstg_call, n, DURATION_S))

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
        cli("uid2-operator", "site", "add", "--data-dir", str(data), "--site-id", "10",
            "--name", "bench", "--domain", PAGE_DOMAIN)  # fmt: skip
        keypair = cli("uid2-operator", "keypair", "add", "--data-dir", str(data), "--site-id", "10")
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
                    keypair,
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
    results["client_generate_over_http_generate_throughput"] = {
        str(c["in_flight"]): round(c["throughput_per_s"] / h["throughput_per_s"], 3)
        for c, h in zip(measured["client_generate"], measured["http"], strict=True)
        if h["throughput_per_s"]
    }
    write_results("operator_http", results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run()
