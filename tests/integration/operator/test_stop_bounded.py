"""A stop that has drained ends the process, even while a handler is still blocked past the
grace: the process must not outlive its `stopped` line by as long as that handler runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.integration.operator.conftest import add_client, init_dir, md
from tests.support.procs import ServiceProcess
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc

pytestmark = pytest.mark.slow

# The drain's grace (5 s), the store's close giving up on the blocked write (2 s,
# OperatorStore.close), the exit bound (2 s, EXIT_AFTER_STOP_S), and room for a loaded box.
# The operator case measures ~9.1 s unloaded: a 10 s bound left under a second to spare.
BOUND_S = 12.0


def _hold_write_lock(db: Path, seconds: int) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); print('held', flush=True)\n"
            f"time.sleep({seconds})",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_operator_exits_while_an_opt_out_waits_on_another_process_lock(tmp_path: Path) -> None:
    init_dir(tmp_path)
    portal = add_client(tmp_path, 300, "portal", ["OPTOUT"])
    proc = ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]
    ).wait_ready(30)
    holder = _hold_write_lock(tmp_path / "operator.sqlite3", 25)
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pbg.OperatorServiceStub(channel)
            call = stub.OptOut.future(
                pb.OptOutRequest(dii=pb.Dii(email="late@example.com")),
                metadata=md(portal),
                timeout=60,
            )
            time.sleep(0.5)  # the write is now waiting for the lock
            started = time.monotonic()
            assert proc.terminate(timeout_s=30) == 0
            assert time.monotonic() - started < BOUND_S  # was ~25 s: the whole lock hold
            with pytest.raises(grpc.RpcError):
                call.result()
    finally:
        holder.kill()
        holder.wait()


def test_dsp_exits_while_a_slow_bid_is_still_sleeping() -> None:
    proc = ServiceProcess(
        ["uid2-dsp", "serve", "--listen", "127.0.0.1:0", "--name", "slowpoke",
         "--mode", "slow", "--delay-ms", "30000"]
    ).wait_ready(30)  # fmt: skip
    with grpc.insecure_channel(proc.address) as channel:
        stub = openrtb_pb2_grpc.BidderServiceStub(channel)
        call = stub.Bid.future(
            openrtb_pb2.BidRequest(id="a1", imp=[openrtb_pb2.Imp(id="1")]), timeout=60
        )
        time.sleep(0.5)
        started = time.monotonic()
        assert proc.terminate(timeout_s=40) == 0
        assert time.monotonic() - started < BOUND_S  # was ~30 s: the whole delay
        with pytest.raises(grpc.RpcError):
            call.result()
