"""`uid2-ssp publisher disable` run beside a serving `uid2-ssp serve` (both real processes, one
data dir): the serving SSP refuses the key within a second, and takes it again after `enable`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.procs import ServiceProcess, run_cli, wait_until
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc

pytestmark = pytest.mark.slow


def _submit(stub: ssp_pb2_grpc.SspServiceStub, key: str) -> grpc.StatusCode:
    try:
        stub.SubmitImpression(
            ssp_pb2.SubmitImpressionRequest(page_domain="news.example.com", placement_id="p"),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=5,
        )
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _cli(*argv: str, data_dir: Path) -> str:
    r = run_cli(["uid2-ssp", *argv], env={"UID2_SSP_DATA_DIR": str(data_dir)})
    assert r.returncode == 0, r.stderr
    return r.stdout


def _code_within(stub: ssp_pb2_grpc.SspServiceStub, key: str, want: grpc.StatusCode) -> float:
    began = time.monotonic()
    while _submit(stub, key) != want:
        assert time.monotonic() - began < 1.0, f"still not {want} after 1 s"
        time.sleep(0.02)
    return time.monotonic() - began


def test_a_disabled_key_is_refused_by_the_serving_ssp(tmp_path: Path) -> None:
    out = _cli("publisher", "add", "--name", "news", "--domain", "news.example.com",
               data_dir=tmp_path)  # fmt: skip
    key = json.loads(out)["api_key"]
    ssp = ServiceProcess(
        ["uid2-ssp", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]
    ).wait_ready()
    try:
        with grpc.insecure_channel(ssp.address) as channel:
            stub = ssp_pb2_grpc.SspServiceStub(channel)
            assert _submit(stub, key) == grpc.StatusCode.OK  # and now in the SSP's cache
            _cli("publisher", "disable", "--name", "news", data_dir=tmp_path)
            _code_within(stub, key, grpc.StatusCode.UNAUTHENTICATED)
            listing = _cli("publisher", "list", data_dir=tmp_path)
            [listed] = [json.loads(line) for line in listing.splitlines()]
            assert listed["disabled"] is True and key not in json.dumps(listed)
            _cli("publisher", "enable", "--name", "news", data_dir=tmp_path)
            _code_within(stub, key, grpc.StatusCode.OK)
        assert key not in ssp.log_text()
    finally:
        assert ssp.terminate() == 0


def test_disabling_a_subscriber_ends_its_open_bid_stream(tmp_path: Path) -> None:
    key = json.loads(_cli("subscriber", "add", "--name", "dmp", data_dir=tmp_path))["api_key"]
    ssp = ServiceProcess(
        ["uid2-ssp", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]
    ).wait_ready()
    try:
        with grpc.insecure_channel(ssp.address) as channel:
            stream = ssp_pb2_grpc.SspServiceStub(channel).StreamBidRequests(
                ssp_pb2.StreamBidRequestsRequest(),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=20,
            )
            time.sleep(0.5)  # open, and past its first key check
            _cli("subscriber", "disable", "--name", "dmp", data_dir=tmp_path)
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() - began < 3.0  # about RECHECK_KEY_S, not the 20 s timeout
    finally:
        assert ssp.terminate() == 0


def test_an_ssp_whose_store_was_replaced_under_it_says_so_and_stops_serving(
    tmp_path: Path,
) -> None:
    """The store removed and a backup restored while the SSP serves: a disable made in the new
    file would never reach it. It says so once and reports NOT_SERVING, with no call to make it
    look; before, it went on accepting the disabled key with no word, and then, until a call
    came, reported SERVING."""
    data, backups = tmp_path / "ssp", tmp_path / "backups"
    data.mkdir()
    backups.mkdir()
    out = _cli("publisher", "add", "--name", "news", "--domain", "news.example.com",
               data_dir=data)  # fmt: skip
    key = json.loads(out)["api_key"]
    ssp = ServiceProcess(
        ["uid2-ssp", "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"]
    ).wait_ready()
    try:
        with grpc.insecure_channel(ssp.address) as channel:
            stub = ssp_pb2_grpc.SspServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            assert _submit(stub, key) == grpc.StatusCode.OK
            _cli("backup", "--to", str(backups / "b.sqlite3"), data_dir=data)
            for path in data.iterdir():
                path.unlink()
            _cli("restore", "--from", str(backups / "b.sqlite3"), data_dir=data)
            _cli("publisher", "disable", "--name", "news", data_dir=data)

            def not_serving() -> bool:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                return bool(status == health_pb2.HealthCheckResponse.NOT_SERVING)

            assert wait_until(not_serving, 10)
    finally:
        ssp.terminate()
    assert [e.get("event") for e in ssp.events].count("store_file_replaced") == 1
