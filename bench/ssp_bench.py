"""SSP benchmarks (issue 5), on free loopback ports with real processes (`uid2-operator`,
`uid2-ssp`, two `uid2-dsp`), all decrypting with their own ID_READER keys:

- impression -> auction over gRPC (SubmitImpression with an operator-issued token, the SSP
  decrypting it and fanning out to 2 local bidders): throughput and p50/p99 latency;
- in-process decrypt per token: ours (`uid2_crypto.tokens.TokenDecoder`) beside the official
  SDK's (`uid2_client.encryption.decrypt_token`), same tokens and keys, same run.

Writes bench/results/ssp.json and returns the same dict."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from uid2_client.client_type import ClientType as SdkClientType
from uid2_client.encryption import decrypt_token as sdk_decrypt
from uid2_client.refresh_keys_util import parse_keys_json

from bench.common import add_client, cli, latency_summary, write_results
from bidstream.key_json import key_container_dict
from demo.processes import ServiceProcess
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc
from uid2_crypto.keys import parse_key_container_json
from uid2_crypto.tokens import TokenDecoder

BIN = Path(sys.executable).parent
SITE = 42
DOMAIN = "news.example.com"
TOKENS = 200
IMPRESSIONS = 3000
CONCURRENCY = 16
DECRYPT_ROUNDS = 25


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _auctions(ssp: ssp_pb2_grpc.SspServiceStub, pub_key: str, tokens: list[str]) -> dict[str, Any]:
    def one(i: int) -> tuple[float, int, int]:
        request = ssp_pb2.SubmitImpressionRequest(
            page_domain=DOMAIN,
            placement_id="top",
            floor_price=0.5,
            advertising_token=tokens[i % len(tokens)],
        )
        t0 = time.perf_counter()
        r = ssp.SubmitImpression(request, metadata=_auth(pub_key), timeout=5)
        return (time.perf_counter() - t0) * 1000, r.token_disposition, r.bids_received

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(200)))  # warm-up
        start = time.perf_counter()
        results = list(pool.map(one, range(IMPRESSIONS)))
        wall = time.perf_counter() - start
    valid = sum(1 for _, d, _ in results if d == ssp_pb2.TOKEN_DISPOSITION_VALID)
    return {
        "impressions": IMPRESSIONS,
        "concurrency": CONCURRENCY,
        "bidders": 2,
        "throughput_per_s": round(IMPRESSIONS / wall, 1),
        "latency": latency_summary([ms for ms, _, _ in results]),
        "tokens_valid": valid,
        "mean_bids_received": round(statistics.fmean(b for _, _, b in results), 3),
    }


def _decrypt(body: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    ours = TokenDecoder.from_container(parse_key_container_json(body))
    sdk_keys = parse_keys_json(body).keys
    now_ms = time.time_ns() // 1_000_000
    now = dt.datetime.now(tz=dt.UTC)
    # Same answers first, then time each.
    for t in tokens[:20]:
        a = ours.decrypt(t, now_ms, domain_or_app=DOMAIN)
        b = sdk_decrypt(t, sdk_keys, DOMAIN, SdkClientType.BIDSTREAM, now)
        assert a.success and b.success and a.raw_uid == b.uid
    timings: dict[str, float] = {}
    for name, fn in (
        ("ours", lambda t: ours.decrypt(t, now_ms, domain_or_app=DOMAIN)),
        ("official_sdk", lambda t: sdk_decrypt(t, sdk_keys, DOMAIN, SdkClientType.BIDSTREAM, now)),
    ):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(DECRYPT_ROUNDS):
                for t in tokens:
                    fn(t)
            best = min(best, time.perf_counter() - t0)
        timings[name] = best / (DECRYPT_ROUNDS * len(tokens)) * 1e6
    return {
        "tokens": len(tokens),
        "token_version": "v4",
        "ours_us_per_token": round(timings["ours"], 2),
        "official_sdk_us_per_token": round(timings["official_sdk"], 2),
        "speedup_vs_sdk": round(timings["official_sdk"] / timings["ours"], 2),
    }


def run() -> dict[str, Any]:
    procs: list[ServiceProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        op_dir, ssp_dir = Path(tmp, "operator"), Path(tmp, "ssp")
        op_dir.mkdir()
        ssp_dir.mkdir()
        cli("uid2-operator", "init", "--data-dir", str(op_dir))
        cli("uid2-operator", "site", "add", "--data-dir", str(op_dir), "--site-id", str(SITE),
             "--name", "news", "--domain", "example.com")  # fmt: skip
        keys = {}
        for name, site, roles in (
            ("generator", SITE, "GENERATOR"),
            ("ssp", 100, "ID_READER"),
            ("dsp", 101, "ID_READER"),
        ):
            keys[name] = str(add_client(op_dir, site, name, roles)["api_key"])
        pub_key = str(cli("uid2-ssp", "publisher", "add", "--data-dir", str(ssp_dir),
                           "--name", "news", "--domain", DOMAIN)["api_key"])  # fmt: skip
        quiet = {"UID2_OPERATOR_LOG_LEVEL": "WARNING"}
        try:
            operator = ServiceProcess(
                [str(BIN / "uid2-operator"), "serve", "--data-dir", str(op_dir),
                 "--listen", "127.0.0.1:0", "--log-level", "INFO"], env=quiet,
            ).wait_ready()  # fmt: skip
            procs.append(operator)
            bidders = []
            for name, price in (("alpha", "1.0"), ("beta", "1.2")):
                dsp = ServiceProcess(
                    [str(BIN / "uid2-dsp"), "serve", "--listen", "127.0.0.1:0", "--name", name,
                     "--base-price", price, "--operator", operator.address,
                     "--operator-api-key", keys["dsp"], "--log-level", "INFO"]
                ).wait_ready()  # fmt: skip
                procs.append(dsp)
                bidders += ["--bidder", f"{name}={dsp.address}"]
            ssp_proc = ServiceProcess(
                [str(BIN / "uid2-ssp"), "serve", "--data-dir", str(ssp_dir),
                 "--listen", "127.0.0.1:0", "--operator", operator.address,
                 "--operator-api-key", keys["ssp"], *bidders, "--tmax-ms", "150",
                 "--log-level", "INFO"]
            ).wait_ready()  # fmt: skip
            procs.append(ssp_proc)
            with grpc.insecure_channel(operator.address) as op_ch:
                op = operator_pb2_grpc.OperatorServiceStub(op_ch)
                tokens = [
                    op.GenerateToken(
                        operator_pb2.GenerateTokenRequest(
                            dii=operator_pb2.Dii(email=f"{uuid.uuid4().hex}@example.com"),
                            privacy_settings=operator_pb2.PrivacySettings(
                                transparency_notice_accepted=True
                            ),
                        ),
                        metadata=_auth(keys["generator"]),
                        timeout=5,
                    ).identity.advertising_token
                    for _ in range(TOKENS)
                ]
                container = op.GetBidstreamKeys(
                    operator_pb2.GetBidstreamKeysRequest(), metadata=_auth(keys["ssp"]), timeout=5
                ).key_container
            with grpc.insecure_channel(ssp_proc.address) as ssp_ch:
                auction = _auctions(ssp_pb2_grpc.SspServiceStub(ssp_ch), pub_key, tokens)
        finally:
            for p in reversed(procs):
                try:
                    p.terminate()
                except Exception:
                    p.kill()
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "setup": "uid2-operator, uid2-ssp (decrypting, tmax 150 ms) and 2 uid2-dsp (decrypting) "
        "as processes on loopback; client threads in the bench process",
        "impression_to_auction": auction,
        "decrypt_in_process": _decrypt(key_container_dict(container), tokens),
    }
    write_results("ssp", result)
    d = result["decrypt_in_process"]
    print(
        f"impression -> auction, 2 bidders, {auction['concurrency']} in flight: "
        f"{auction['throughput_per_s']}/s, p50 {auction['latency']['p50_ms']} ms, "
        f"p99 {auction['latency']['p99_ms']} ms\n"
        f"decrypt per token: ours {d['ours_us_per_token']} µs, official SDK "
        f"{d['official_sdk_us_per_token']} µs ({d['speedup_vs_sdk']}x)"
    )
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
