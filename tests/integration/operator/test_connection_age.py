"""A decryptor's opt-out stream across the operator's connection age: every connection gets
GOAWAY after 10 minutes (svc_common.grpc_server.MAX_CONNECTION_AGE_MS), which ends the streams
on it. The decryptor reconnects, misses no opt-out, and logs no failure: README says to alert
on `optout_stream_broken`, and it fired at every age-out."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from bidstream.decryptor.operator_client import OperatorClient
from bidstream.decryptor.optouts import OptOutSet, OptOutWatcher
from operator_svc.config import OperatorConfig
from operator_svc.server import create_server
from svc_common import grpc_server
from tests.integration.operator.conftest import add_client, init_dir, md
from tests.support.procs import wait_until
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg

pytestmark = pytest.mark.slow


def test_a_decryptor_rides_the_connection_age_without_a_failure_or_a_lost_opt_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_server, "MAX_CONNECTION_AGE_MS", 1500)  # the real 10 min / 30 s
    monkeypatch.setattr(grpc_server, "MAX_CONNECTION_AGE_GRACE_MS", 500)
    init_dir(tmp_path)
    reader = add_client(tmp_path, 300, "reader", ["ID_READER"])
    opter = add_client(tmp_path, 200, "opter", ["OPTOUT"])
    served, port = create_server(OperatorConfig(data_dir=tmp_path, listen="127.0.0.1:0"))
    client = OperatorClient(f"127.0.0.1:{port}", reader.api_key)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    optouts = OptOutSet()
    watcher = OptOutWatcher(client.watch_optouts, optouts)
    try:
        with capture_logs() as logs:
            watcher.start()
            assert optouts.loaded.wait(10)
            stub = pbg.OperatorServiceStub(channel)
            for n in range(12):  # over about three ages of the connection
                stub.OptOut(
                    pb.OptOutRequest(dii=pb.Dii(email=f"age{n}@example.com")),
                    metadata=md(opter),
                    timeout=5,
                )
                assert wait_until(lambda n=n: len(optouts) == n + 1, 5), n
                time.sleep(0.4)
            assert watcher.connects >= 3
        events = [e["event"] for e in logs if "optout_stream" in e["event"]]
        assert "optout_stream_ended" in events
        assert "optout_stream_broken" not in events
    finally:
        watcher.stop()
        client.close()
        channel.close()
        served.stop(1.0)
