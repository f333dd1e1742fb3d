"""The operator over gRPC, beside bare gRPC echo servers measured in the same run.

The operator runs as its own process (`uid2-operator serve`, grpc.aio); the same client drives
every server: one process, one channel per server, a closed loop keeping 1 or 32 calls in flight
with `future()` callbacks, for a fixed duration after a warm-up. The servers are measured in
interleaved rounds (every server once per round, ROUNDS rounds): this box is shared and noisy, so
each figure is the median over rounds and each ratio the median of the per-round ratios.

Baselines, each a generic unary handler: a bare sync echo (32 worker threads: the reference
figure), a bare aio echo (the operator's server model), both returning the request bytes fed the
very bytes of a GenerateTokenRequest (no (de)serialisation); an aio echo behind the suite's edge
(ErrorInfo mapping and one JSON log line per call), which shows what the edge costs by itself;
and `canned_generate`: an aio server with the edge that parses a real GenerateTokenRequest (with
its API key metadata) and answers a pre-built GenerateTokenResponse of the operator's real size,
doing no work at all. That one is the ceiling for any GenerateToken on this stack and box: the
operator can only close the gap between it and the echo by doing less than nothing. From the
operator itself, `refresh_invalid` (RefreshToken with a tampered token: decoded, refused by its
AES-GCM check, answered INVALID_TOKEN) is the cheapest call it answers, and
`generate_in_handler_p50_ms` the time GenerateToken spends inside its handler (from the
operator's own log lines), against the latency its client sees.

Figures: throughput (calls/s), p50/p99 latency (ms), operator/echo throughput ratios; MapIdentity
of 5,000 DIIs end to end (median of 10); `init` time, time to SERVING and resident memory with
2^20 salt buckets; how fast WatchOptOuts replays a backlog of 100,000 opt-outs (what a starting
SSP or DSP waits for).

Run: `make bench` or `.venv/bin/python -m bench.operator_bench`. Writes bench/results/operator.json.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

# Also run as a script (the echo servers): make the repository importable first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import add_client, cli, wait_serving, write_results

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DURATION_S = float(os.environ.get("OPERATOR_BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("OPERATOR_BENCH_ROUNDS", "5"))
REPLAY_OPTOUTS = int(os.environ.get("OPERATOR_BENCH_REPLAY_OPTOUTS", "100000"))
WARMUP_S = 0.5
TARGET_RATIO = 0.8
TARGET_MAP_MS = 100.0
ECHO_METHOD = "/bench.Echo/Echo"
IN_FLIGHT = (1, 32)
BASELINES = ("echo", "echo_aio", "echo_aio_with_edge")


# -- the echo server (run as `python bench/operator_bench.py --echo`) -------------------------


def _echo_server(edge: bool, aio: bool, canned: str | None = None) -> None:
    """A bare unary echo: on grpcio's sync server, the reference figure, or with `aio` on
    grpc.aio, the services' server model (svc_common.grpc_aio), and there with `edge` the
    services' edge and its one JSON log line per call. `canned`: a file
    holding a serialised GenerateTokenResponse, answered to every GenerateToken (parsed with the
    real proto classes) instead of echoing."""
    sys.path.insert(0, str(ROOT))
    from svc_common.logging import configure_logging

    configure_logging("INFO", service="echo")

    def announce(port: int) -> None:
        sys.stdout.write(json.dumps({"event": "serving", "port": port}) + "\n")
        sys.stdout.flush()

    if aio:
        import asyncio

        from svc_common.aio_edge import AioEdge, EdgeRegistrar

        async def serve() -> None:
            async def echo(request: bytes, _context: Any) -> bytes:
                return request

            server = grpc.aio.server()
            if canned is None:
                service, methods = "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            else:
                from uid2.operator.v1 import operator_pb2 as pb

                response = pb.GenerateTokenResponse.FromString(Path(canned).read_bytes())

                async def generate(_request: Any, _context: Any) -> Any:
                    return response

                service = "uid2.operator.v1.OperatorService"
                methods = {
                    "GenerateToken": grpc.unary_unary_rpc_method_handler(
                        generate,
                        request_deserializer=pb.GenerateTokenRequest.FromString,
                        response_serializer=pb.GenerateTokenResponse.SerializeToString,
                    )
                }
            # The edge as the operator has it: wrapped around the handler at registration.
            target = EdgeRegistrar(server, AioEdge("echo")) if edge else server
            _register(target, service, methods)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            announce(port)
            await server.wait_for_termination()

        asyncio.run(serve())
        return

    def echo_sync(request: bytes, _context: Any) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    _register(server, "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo_sync)})
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(port)
    server.wait_for_termination()


def _register(server: Any, service: str, methods: dict[str, Any]) -> None:
    """As generated code registers a service: by name and as registered methods (the faster
    path, which the bench clients take like generated stubs do)."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    server.add_registered_method_handlers(service, methods)


# -- helpers ------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _closed_loop(
    call: Any, requests: list[Any], in_flight: int, duration_s: float
) -> dict[str, Any]:
    """Keeps `in_flight` calls outstanding for `duration_s`; returns throughput and latency."""
    lock = threading.Lock()
    done = threading.Event()
    latencies: list[float] = []
    errors = [0]
    counter = [0]
    state = {"record": False, "stop": False, "outstanding": 0}

    def issue() -> None:
        with lock:
            i = counter[0]
            counter[0] += 1
            state["outstanding"] += 1
        start = time.perf_counter()
        fut = call.future(requests[i % len(requests)], timeout=30)

        def finished(f: Any) -> None:
            elapsed = time.perf_counter() - start
            if f.exception() is not None:
                errors[0] += 1
            with lock:
                state["outstanding"] -= 1
                if state["record"]:
                    latencies.append(elapsed)
                stop = state["stop"]
                if stop and state["outstanding"] == 0:
                    done.set()
            if not stop:
                issue()

        fut.add_done_callback(finished)

    for _ in range(in_flight):
        issue()
    time.sleep(WARMUP_S)
    with lock:
        state["record"] = True
    t0 = time.perf_counter()
    time.sleep(duration_s)
    with lock:
        state["record"] = False
        state["stop"] = True
        elapsed = time.perf_counter() - t0
        n = len(latencies)
    done.wait(30)
    lat = sorted(latencies)
    return {
        "in_flight": in_flight,
        "calls": n,
        "errors": errors[0],
        "throughput_per_s": round(n / elapsed, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 3) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3) if lat else None,
    }


def _tampered(request: Any) -> Any:
    """The request with its refresh token's last character changed: the operator decodes it and
    fails its AES-GCM check, answering INVALID_TOKEN. The cheapest call the real operator
    process answers with a real check, so its ratio to the echo shows what is left for work."""
    token = request.refresh_token
    last = "A" if token[-1] != "A" else "B"
    return type(request)(refresh_token=token[:-1] + last)


def _handler_latencies(log_path: Path, offset: int, method: str) -> list[float]:
    """latency_ms of the `rpc` lines for `method` written to the log after `offset`."""
    with log_path.open("rb") as log:
        log.seek(offset)
        lines = log.read().splitlines()
    out: list[float] = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "rpc" and str(event.get("method", "")).endswith("/" + method):
            out.append(float(event["latency_ms"]))
    return out


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's rounds at one concurrency: medians, plus every round's throughput."""
    return {
        "in_flight": runs[0]["in_flight"],
        "calls": sum(r["calls"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "throughput_per_s": statistics.median(r["throughput_per_s"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "round_throughputs": [r["throughput_per_s"] for r in runs],
    }


def run() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from uid2.operator.v1 import operator_pb2 as pb
    from uid2.operator.v1 import operator_pb2_grpc as pbg

    results: dict[str, Any] = {"duration_s": DURATION_S, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="opbench") as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        cli("uid2-operator", "init", "--data-dir", str(data))
        results["init_s"] = round(time.perf_counter() - t, 3)
        client = add_client(data, 10, "bench", "GENERATOR,MAPPER")
        log_path = Path(tmp) / "operator.log"
        t = time.perf_counter()
        with log_path.open("w") as log_file:
            op = subprocess.Popen(
                [
                    str(BIN / "uid2-operator"),
                    "serve",
                    "--data-dir",
                    str(data),
                    "--listen",
                    "127.0.0.1:0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        echoes: dict[str, subprocess.Popen[str]] = {}
        try:
            serving = wait_serving(log_path)
            op_port, startup_ms = int(serving["port"]), int(serving.get("startup_ms", 0))
            results["startup"] = {
                "process_to_serving_s": round(time.perf_counter() - t, 3),
                "server_startup_ms": startup_ms,
                "rss_mb_at_ready": _rss_mb(op.pid),
            }
            md = (("authorization", "Bearer " + client["api_key"]),)
            op_channel = grpc.insecure_channel(f"127.0.0.1:{op_port}")
            stub = pbg.OperatorServiceStub(op_channel)
            gen_reqs = [
                pb.GenerateTokenRequest(
                    dii=pb.Dii(email=f"user{i}@example.com"),
                    privacy_settings=pb.PrivacySettings(transparency_notice_accepted=True),
                )
                for i in range(1000)
            ]
            refresh_reqs = [
                pb.RefreshTokenRequest(
                    refresh_token=stub.GenerateToken(r, metadata=md).identity.refresh_token
                )
                for r in gen_reqs[:200]
            ]
            echo_reqs = [r.SerializeToString() for r in gen_reqs]
            canned = Path(tmp) / "generate_response.bin"
            canned.write_bytes(stub.GenerateToken(gen_reqs[0], metadata=md).SerializeToString())
            # The baselines (module docstring): the bare sync echo is the reference figure.
            echo_flags = {
                "echo": [],
                "echo_aio": ["--aio"],
                "echo_aio_with_edge": ["--aio", "--edge"],
                "canned_generate": ["--aio", "--edge", "--canned", str(canned)],
            }
            echoes = {
                name: subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--echo", *flags],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                for name, flags in echo_flags.items()
            }

            class _WithMeta:
                def __init__(self, call: Any) -> None:
                    self._call = call

                def future(self, request: Any, timeout: float) -> Any:
                    return self._call.future(request, timeout=timeout, metadata=md)

            calls: dict[str, tuple[Any, list[Any]]] = {}
            for name, proc in echoes.items():
                assert proc.stdout is not None
                port = int(json.loads(proc.stdout.readline())["port"])
                channel = grpc.insecure_channel(f"127.0.0.1:{port}")
                if name == "canned_generate":
                    canned_stub = pbg.OperatorServiceStub(channel)
                    calls[name] = (_WithMeta(canned_stub.GenerateToken), gen_reqs)
                else:
                    echo_call = channel.unary_unary(ECHO_METHOD, _registered_method=True)
                    calls[name] = (echo_call, echo_reqs)
            calls["generate"] = (_WithMeta(stub.GenerateToken), gen_reqs)
            calls["refresh"] = (stub.RefreshToken, refresh_reqs)
            calls["refresh_invalid"] = (stub.RefreshToken, [_tampered(r) for r in refresh_reqs])

            # The operator's own log line per call holds the time inside its handler
            # (latency_ms): read back for the calls of each measured GenerateToken run.
            handler_ms: dict[int, list[float]] = {n: [] for n in IN_FLIGHT}
            rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in IN_FLIGHT}
            for in_flight in IN_FLIGHT:
                for _ in range(ROUNDS):
                    measured: dict[str, Any] = {}
                    for name, (call, reqs) in calls.items():
                        offset = log_path.stat().st_size
                        measured[name] = _closed_loop(call, reqs, in_flight, DURATION_S)
                        if name == "generate":
                            handler_ms[in_flight] += _handler_latencies(
                                log_path, offset, "GenerateToken"
                            )
                    rounds[in_flight].append(measured)
            results["rounds"] = ROUNDS
            results["generate_in_handler_p50_ms"] = {
                str(n): round(statistics.median(handler_ms[n]), 3) for n in IN_FLIGHT
            }
            results["unary"] = {
                name: [_median_run([r[name] for r in rounds[n]]) for n in IN_FLIGHT]
                for name in calls
            }
            for base in BASELINES:
                results["ratio_to_" + base] = {
                    f"{name}_{n}": round(
                        statistics.median(
                            r[name]["throughput_per_s"] / r[base]["throughput_per_s"]
                            for r in rounds[n]
                        ),
                        3,
                    )
                    for name in ("generate", "refresh", "refresh_invalid", "canned_generate")
                    for n in IN_FLIGHT
                }
            results["ratio_target"] = TARGET_RATIO

            batch = pb.MapIdentityRequest(
                dii=[pb.Dii(email=f"map{i}@example.com") for i in range(5000)]
            )
            stub.MapIdentity(batch, metadata=md)
            times = []
            for _ in range(10):
                t = time.perf_counter()
                resp = stub.MapIdentity(batch, metadata=md, timeout=30)
                times.append((time.perf_counter() - t) * 1000)
                assert len(resp.results) == 5000
            results["map_identity_5000"] = {
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
                "target_ms": TARGET_MAP_MS,
            }
            results["startup"]["rss_mb_after_load"] = _rss_mb(op.pid)
            op_channel.close()
        finally:
            for proc in echoes.values():
                proc.kill()
                proc.wait(10)
            op.terminate()
            results["operator_exit_code"] = op.wait(30)
    results["watch_optouts_replay"] = _optout_replay(REPLAY_OPTOUTS)
    write_results("operator", results)
    _print_table(results)
    return results


def _optout_replay(n: int) -> dict[str, Any]:
    """How fast WatchOptOuts replays a backlog of `n` opt-outs: what a starting SSP or DSP
    waits for before it vouches for any token. The rows go straight into a fresh store."""
    sys.path.insert(0, str(ROOT))
    from uid2.operator.v1 import operator_pb2 as pb
    from uid2.operator.v1 import operator_pb2_grpc as pbg

    with tempfile.TemporaryDirectory(prefix="opreplay") as tmp:
        data = Path(tmp) / "data"
        cli("uid2-operator", "init", "--data-dir", str(data))
        reader = add_client(data, 20, "replay-reader", "ID_READER")
        with sqlite3.connect(data / "operator.sqlite3") as conn:
            conn.executemany(
                "INSERT INTO optouts(flh, opted_out_at) VALUES (?, ?)",
                ((os.urandom(32), 1_790_000_000_000 + i) for i in range(n)),
            )
        log_path = Path(tmp) / "operator.log"
        with log_path.open("w") as log_file:
            op = subprocess.Popen(
                [str(BIN / "uid2-operator"), "serve", "--data-dir", str(data),
                 "--listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )  # fmt: skip
        try:
            port = int(wait_serving(log_path)["port"])
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stream = pbg.OperatorServiceStub(channel).WatchOptOuts(
                    pb.WatchOptOutsRequest(since=0),
                    metadata=(("authorization", "Bearer " + reader["api_key"]),),
                    timeout=600,
                )
                t = time.perf_counter()
                got = 0
                for item in stream:
                    if item.backlog_sent:
                        break
                    got += 1
                seconds = time.perf_counter() - t
                stream.cancel()
        finally:
            op.terminate()
            op.wait(30)
    return {"opt_outs": got, "seconds": round(seconds, 2), "per_second": round(got / seconds)}


def _print_table(results: dict[str, Any]) -> None:
    print("operator over gRPC (calls/s, p50/p99 ms), same run, same client:")
    for name, rows in results["unary"].items():
        cells = [
            f"{r['in_flight']:>2} in flight {r['throughput_per_s']:>8.0f}/s "
            f"{r['p50_ms']}/{r['p99_ms']}"
            for r in rows
        ]
        print(f"  {name:<20} " + "   ".join(cells))
    for key, ratios in results.items():
        if key.startswith("ratio_to_"):
            print(f"  {key:<26} {ratios}")
    print(f"  GenerateToken in its handler, p50 ms: {results['generate_in_handler_p50_ms']}")
    print(f"  MapIdentity 5,000: {results['map_identity_5000']}")
    print(f"  WatchOptOuts backlog replay: {results['watch_optouts_replay']}")
    print(f"  start-up: {results['startup']}")


if __name__ == "__main__":
    if "--echo" in sys.argv:
        canned = sys.argv[sys.argv.index("--canned") + 1] if "--canned" in sys.argv else None
        _echo_server(edge="--edge" in sys.argv, aio="--aio" in sys.argv, canned=canned)
    else:
        run()
