"""Scheduled salt rotation (`serve --rotate-salts-daily-fraction`) on a 2^20-bucket store: how
long it holds the store's write lock, and what opt-outs see meanwhile, in the rotating process
and in another serve process on the same data dir.

Operator A runs in this process (create_server with a hand-moved clock, so the daily rotation
comes due when the clock is moved a day on, not after a day); operator B is a real
`uid2-operator serve` on the same data dir, not rotating. One client thread per operator calls
OptOut back to back (each a durable write: BEGIN IMMEDIATE ... COMMIT, synced) throughout, and
ROTATIONS rotations of 1/365 of the buckets run, each after a quiet spell. A's client shares
this process's interpreter with A's rotation, as A's own request threads would.

Figures: `locked_ms` of each rotation (the time from taking the write lock to the commit, from
its `salts_rotated_on_schedule` line), and for each operator the OptOut latency outside the
rotations against the slowest call that overlapped each rotation.

Run: `.venv/bin/python -m bench.rotation_bench`. Writes bench/results/rotation.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import grpc
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, add_client, cli, latency_summary, wait_serving, write_results

ROTATIONS = int(os.environ.get("ROTATION_BENCH_ROTATIONS", "3"))
QUIET_S = 2.0
FRACTION = 1 / 365
DAY_MS = 86_400_000


class OptOutLoad:
    """One thread calling OptOut back to back; keeps (start, end) monotonic times of each call."""

    def __init__(self, address: str, api_key: str, name: str) -> None:
        from uid2.operator.v1 import operator_pb2 as pb
        from uid2.operator.v1 import operator_pb2_grpc as pbg

        self._pb = pb
        self._channel = grpc.insecure_channel(address)
        self._stub = pbg.OperatorServiceStub(self._channel)
        self._meta = (("authorization", "Bearer " + api_key),)
        self._name = name
        self.calls: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OptOutLoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            request = self._pb.OptOutRequest(dii=self._pb.Dii(email=f"{self._name}{n}@bench.test"))
            t = time.monotonic()
            self._stub.OptOut(request, metadata=self._meta, timeout=60)
            self.calls.append((t, time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._channel.close()


def _split(
    calls: list[tuple[float, float]], windows: list[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Latencies (ms) of the calls outside every window, and the slowest overlapping each."""
    outside: list[float] = []
    worst = [0.0] * len(windows)
    for start, end in calls:
        hit = False
        for i, (w0, w1) in enumerate(windows):
            if start < w1 and end > w0:
                worst[i] = max(worst[i], (end - start) * 1000)
                hit = True
        if not hit:
            outside.append((end - start) * 1000)
    return outside, worst


def run() -> dict[str, Any]:
    from operator_svc.config import OperatorConfig
    from operator_svc.server import create_server
    from operator_svc.store import OperatorStore
    from svc_common.clock import ManualClock, SystemClock

    with tempfile.TemporaryDirectory(prefix="rotbench") as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        cli("uid2-operator", "init", "--data-dir", str(data))
        init_s = time.perf_counter() - started
        key_a = add_client(data, 10, "bench-a", "OPTOUT")["api_key"]
        key_b = add_client(data, 11, "bench-b", "OPTOUT")["api_key"]
        now_ms = SystemClock().now_ms()
        store = OperatorStore.open(data)
        with store.transaction() as conn:  # rotated just now: the next one is a day away
            OperatorStore.set_salts_rotated_ms(conn, now_ms)
        store.close()

        log_path = Path(tmp) / "b.log"
        with log_path.open("w") as log_file:
            b = subprocess.Popen(
                [str(BIN / "uid2-operator"), "serve", "--data-dir", str(data),
                 "--listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )  # fmt: skip
        clock = ManualClock(now_ms)
        config = OperatorConfig(
            data_dir=data,
            rotate_salts_daily_fraction=FRACTION,
            rotation_check_interval_s=0.02,
        )
        served = None
        try:
            port_b = int(wait_serving(log_path)["port"])
            served, port_a = create_server(config, clock=clock)
            loads = [
                OptOutLoad(f"127.0.0.1:{port_a}", key_a, "a").start(),
                OptOutLoad(f"127.0.0.1:{port_b}", key_b, "b").start(),
            ]
            windows: list[tuple[float, float]] = []
            locked: list[int] = []
            # A's per-call lines go to stderr (svc_common.logging.write_call_line): not here.
            with capture_logs() as logs, open(os.devnull, "w") as quiet, redirect_stderr(quiet):
                for _ in range(ROTATIONS):
                    time.sleep(QUIET_S)
                    seen = len(logs)
                    clock.advance(DAY_MS)
                    while not any(e["event"] == "salts_rotated_on_schedule" for e in logs[seen:]):
                        time.sleep(0.005)
                    done = time.monotonic()
                    (line,) = [e for e in logs[seen:] if e["event"] == "salts_rotated_on_schedule"]
                    locked.append(int(line["locked_ms"]))
                    windows.append((done - line["locked_ms"] / 1000, done))
                time.sleep(QUIET_S)
            for load in loads:
                load.stop()
        finally:
            if served is not None:
                served.stop(1.0)
            b.terminate()
            b.wait(30)

    results: dict[str, Any] = {
        "buckets": 1 << 20,
        "fraction": round(FRACTION, 6),
        "rotated_per_run": int(line["rotated"]),
        "init_s": round(init_s, 2),
        "locked_ms": locked,
        "locked_ms_median": statistics.median(locked),
    }
    for name, load in zip(("rotating_process", "other_process"), loads, strict=True):
        outside, worst = _split(load.calls, windows)
        results[name] = {
            "optout_outside_rotations": latency_summary(outside),
            "optout_slowest_during_each_rotation_ms": [round(w, 1) for w in worst],
        }
    write_results("rotation", results)
    print(
        f"salt rotation of {results['rotated_per_run']} of 2^20 buckets: write lock held "
        f"{locked} ms (median {results['locked_ms_median']} ms)"
    )
    for name in ("rotating_process", "other_process"):
        r = results[name]
        o = r["optout_outside_rotations"]
        print(
            f"  OptOut on the {name.replace('_', ' ')}: p50 {o['p50_ms']} ms, p99 {o['p99_ms']} "
            f"ms outside rotations; slowest during each: "
            f"{r['optout_slowest_during_each_rotation_ms']} ms"
        )
    return results


if __name__ == "__main__":
    run()
