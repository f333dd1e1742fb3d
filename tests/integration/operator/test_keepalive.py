"""A reader whose process froze (or whose host vanished) without closing its connection gives
its WatchOptOuts slot back once the server's keepalive ping goes unanswered, instead of
holding it for as long as TCP keeps the dead connection (hours)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bidstream.decryptor import operator_client
from bidstream.decryptor.operator_client import OperatorClient
from bidstream.decryptor.optouts import OptOutSet, OptOutWatcher
from operator_svc.config import OperatorConfig
from operator_svc.server import create_server
from svc_common import grpc_server
from tests.integration.operator.conftest import add_client, init_dir
from tests.support.procs import wait_until
from tests.support.tcp_proxy import SilenceableProxy

pytestmark = pytest.mark.slow

_READER = """
import sys, time
import grpc
from uid2.operator.v1 import operator_pb2 as pb, operator_pb2_grpc as pbg
channel = grpc.insecure_channel(sys.argv[1])
stream = pbg.OperatorServiceStub(channel).WatchOptOuts(
    pb.WatchOptOutsRequest(since=0), metadata=(("authorization", "Bearer " + sys.argv[2]),)
)
for message in stream:
    if message.backlog_sent:
        print("ready", flush=True)
        break
time.sleep(120)
"""


def test_a_frozen_reader_loses_its_stream_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_server, "KEEPALIVE_TIME_MS", 500)  # the real 60 s / 20 s, shortened
    monkeypatch.setattr(grpc_server, "KEEPALIVE_TIMEOUT_MS", 1000)
    init_dir(tmp_path)
    reader = add_client(tmp_path, 300, "reader", ["ID_READER"])
    served, port = create_server(OperatorConfig(data_dir=tmp_path, listen="127.0.0.1:0"))
    client = subprocess.Popen(
        [sys.executable, "-c", _READER, f"127.0.0.1:{port}", reader.api_key],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert served.operator is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        optouts = served.operator.optouts
        assert optouts.open_streams("reader") == 1
        # Quiet for a while first: pings go on past the first two without data (an opt-out
        # stream may be idle for hours before its reader vanishes).
        time.sleep(3.0)
        os.kill(client.pid, signal.SIGSTOP)  # alive to TCP, deaf to HTTP/2 pings
        assert wait_until(lambda: optouts.open_streams("reader") == 0, 15.0)
    finally:
        client.kill()
        client.wait()
        served.stop(1.0)


def test_a_reader_notices_a_silent_operator_and_a_quiet_stream_stays_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real 20 s / 10 s client pings and 10 s server allowance, shortened in proportion.
    monkeypatch.setattr(operator_client, "KEEPALIVE_TIME_MS", 500)
    monkeypatch.setattr(operator_client, "KEEPALIVE_TIMEOUT_MS", 1000)
    monkeypatch.setattr(grpc_server, "MIN_CLIENT_PING_INTERVAL_MS", 250)
    init_dir(tmp_path)
    reader = add_client(tmp_path, 300, "reader", ["ID_READER"])
    served, port = create_server(OperatorConfig(data_dir=tmp_path, listen="127.0.0.1:0"))
    proxy = SilenceableProxy(("127.0.0.1", port))
    client = OperatorClient(f"127.0.0.1:{proxy.port}", reader.api_key)
    optouts = OptOutSet()
    # The real first-answer bound (5 s) shortened in the same proportion.
    watcher = OptOutWatcher(client.watch_optouts, optouts, first_answer_s=0.25)
    with capture_logs() as logs:
        watcher.start()
        try:
            assert optouts.loaded.wait(10) and watcher.connected.is_set()
            # Quiet for a while, pinging all along: the operator accepts the pings (at gRPC's
            # default allowance it would answer GOAWAY, breaking the stream every few pings).
            time.sleep(4.0)
            assert watcher.connects == 1 and watcher.connected.is_set()
            proxy.silence()  # the operator frozen, or the network dropping every packet
            assert wait_until(lambda: not watcher.connected.is_set(), 10.0)
            # Then the warning README says to alert on, at the reconnect the operator leaves
            # unanswered. Before the first-answer bound it never came within 10 s here, and
            # only about 20 s after the gauge dropped at the real keepalive settings.
            assert wait_until(lambda: any(e["event"] == "optout_stream_broken" for e in logs), 10.0)
        finally:
            watcher.stop()
            client.close()
            proxy.close()
            served.stop(1.0)
    broken = next(e for e in logs if e["event"] == "optout_stream_broken")
    assert broken["error_type"] == "OperatorSilent"
