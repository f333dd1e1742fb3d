"""A stop that has drained ends the process, even while a handler is still blocked past the
grace: the process must not outlive its `stopped` line by as long as that handler runs."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.operator.conftest import OK_PRIVACY, add_client, init_dir, md
from tests.support.procs import ServiceProcess
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc
from uid2_crypto.envelope import encrypt_request

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


def _serve_with_http(data_dir: Path) -> tuple[ServiceProcess, Any, int]:
    init_dir(data_dir)
    portal = add_client(data_dir, 300, "portal", ["OPTOUT"])
    proc = ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0"]
    ).wait_ready(30)  # fmt: skip
    http_port = next(e for e in proc.events if e.get("event") == "serving")["http_port"]
    return proc, portal, http_port


def _logout_in_background(portal: Any, http_port: int) -> tuple[threading.Thread, list[Any]]:
    """Sends an HTTP logout (an opt-out write) from a thread; the list gets its HTTP status or
    the connection error."""
    answered: list[Any] = []

    def logout() -> None:
        body = encrypt_request(
            base64.b64decode(portal.secret),
            json.dumps({"email": "late-http@example.com"}).encode(),
            now_ms=time.time_ns() // 1_000_000,
            nonce=os.urandom(8),
            iv=os.urandom(12),
        )
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
        try:
            conn.request(
                "POST",
                "/v2/token/logout",
                base64.b64encode(body),
                {"Authorization": f"Bearer {portal.api_key}"},
            )
            answered.append(conn.getresponse().status)
        except (OSError, http.client.HTTPException) as exc:
            answered.append(exc)
        finally:
            conn.close()

    caller = threading.Thread(target=logout)
    caller.start()
    return caller, answered


def test_operator_with_http_api_exits_while_a_logout_waits_on_another_process_lock(
    tmp_path: Path,
) -> None:
    """The README's bound, with both front doors: the HTTP front door's drain overlaps the
    gRPC one, and a logout still blocked after the grace is cancelled, not waited for twice."""
    proc, portal, http_port = _serve_with_http(tmp_path)
    holder = _hold_write_lock(tmp_path / "operator.sqlite3", 25)
    caller, answered = _logout_in_background(portal, http_port)
    try:
        time.sleep(0.5)  # the write is now waiting for the lock
        assert not answered
        started = time.monotonic()
        assert proc.terminate(timeout_s=30) == 0
        assert time.monotonic() - started < BOUND_S  # was ~14 s: two aiohttp waits of 5 s
        caller.join(timeout=10)
        # The caller got a closed connection, not an OK for a write never made.
        assert answered and isinstance(answered[0], Exception)
        # ... and the cancelled request still has its one log line.
        lines = [json.loads(x) for x in proc.log_text().splitlines() if x.startswith("{")]
        assert any(
            e.get("event") == "http"
            and e.get("path") == "/v2/token/logout"
            and e.get("reason") == "CANCELLED"
            for e in lines
        )
    finally:
        holder.kill()
        holder.wait()
        caller.join(timeout=10)


def test_a_logout_that_finishes_within_the_grace_is_answered_on_stop(tmp_path: Path) -> None:
    proc, portal, http_port = _serve_with_http(tmp_path)
    holder = _hold_write_lock(tmp_path / "operator.sqlite3", 2)
    caller, answered = _logout_in_background(portal, http_port)
    try:
        time.sleep(0.5)
        assert not answered
        assert proc.terminate(timeout_s=30) == 0
        caller.join(timeout=10)
        assert answered == [200]
    finally:
        holder.kill()
        holder.wait()
        caller.join(timeout=10)
    # Acknowledged, so durable: the restarted operator has it.
    generator = add_client(tmp_path, 301, "gen", ["GENERATOR"])
    restarted = ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]
    ).wait_ready(30)
    try:
        with grpc.insecure_channel(restarted.address) as channel:
            stub = pbg.OperatorServiceStub(channel)
            reply = stub.GenerateToken(
                pb.GenerateTokenRequest(
                    dii=pb.Dii(email="late-http@example.com"), privacy_settings=OK_PRIVACY
                ),
                metadata=md(generator),
                timeout=10,
            )
        assert reply.status == pb.GENERATE_TOKEN_STATUS_OPTOUT
    finally:
        assert restarted.terminate(timeout_s=30) == 0


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
