"""A bidder that fails shows somewhere: an auction answers NO_FILL with code OK either way, so
the SSP's operators learn of a bidder down or miswired only from its log lines and /metrics."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from structlog.testing import capture_logs

from dsp_svc.config import DspConfig
from dsp_svc.server import create_server as create_dsp
from ssp_svc.bidders import FAILURE_LOG_INTERVAL_S, BidderPool, BidderTarget, _FailureLog
from svc_common.errors import CONNECTION_CLOSED, failure_fields
from svc_common.logging import configure_logging
from svc_common.tls import load_server_tls
from tests.support.health_server import health_only_server
from tests.support.tls_certs import make_tls_files
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_bidder_that_cannot_be_reached_is_counted_and_logged_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(service="test")
    capsys.readouterr()
    pool = BidderPool([BidderTarget("gone", f"127.0.0.1:{_closed_port()}")])
    try:
        for n in range(3):
            request = openrtb_pb2.BidRequest(id=f"auction-{n}")
            request.imp.add(id="1")
            assert not pool.fan_out(request, 500).candidates
        counts = pool.counts()
    finally:
        pool.close()
    assert counts[("gone", "error")] + counts[("gone", "timeout")] == 3
    assert counts[("gone", "bid")] == counts[("gone", "no_bid")] == 0
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    failed = [x for x in lines if x.get("event") == "bidder_failed"]
    # The first failure at once; the next ones only as a count, at most every 30 s.
    assert [(x["bidder"], x["failures_since_last"]) for x in failed] == [("gone", 1)]
    assert failed[0]["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_a_bidder_that_fails_now_and_then_is_one_line_per_interval_not_two_per_miss(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Missing some auctions is normal in real-time bidding: a line on each miss (and another
    # on the next answer) was 400 lines a second at 1,000 auctions a second.
    configure_logging(service="test")
    served, _ = create_dsp(DspConfig(name="flaky", base_price=1.0, fail_rate=0.5))
    pool = BidderPool([BidderTarget("flaky", f"127.0.0.1:{served.port}")])
    capsys.readouterr()
    try:
        for n in range(60):
            request = openrtb_pb2.BidRequest(id=f"auction-{n}")
            request.imp.add(id="1")
            pool.fan_out(request, 2000)
        counts = pool.counts()
    finally:
        pool.close()
        served.stop(0)
    assert counts[("flaky", "error")] >= 10 and counts[("flaky", "bid")] >= 10, counts
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    ours = [x["event"] for x in lines if x.get("bidder") == "flaky"]
    assert ours == ["bidder_failed"]


def test_failures_held_back_are_written_once_their_interval_is_over_whatever_comes_next() -> None:
    # A bidder down for 29 s after a logged failure, then answering again: its outage was
    # written only at its next failure, hours later, under that failure's code.
    log = _FailureLog("flaky")
    down = grpc.RpcError()
    down.code = lambda: grpc.StatusCode.UNAVAILABLE
    with capture_logs() as logs:
        log.failed(TimeoutError(), 0.0)
        for t in range(1, 30):
            log.failed(down, float(t))
        log.tick(29.5)  # an answer inside the interval: nothing yet
        log.tick(FAILURE_LOG_INTERVAL_S + 1)  # the next answer after it
        log.tick(FAILURE_LOG_INTERVAL_S + 2)
    lines = [(e["failures_since_last"], e.get("code")) for e in logs]
    assert lines == [(1, None), (29, "UNAVAILABLE")]


def _one_auction(
    targets: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[list[str], Mapping[tuple[str, ...], float], list[dict[str, Any]]]:
    """One auction among `targets` (name -> address): the bidders that bid, the pool's counts,
    and the `bidder_failed` lines it wrote."""
    configure_logging(service="test")
    capsys.readouterr()
    pool = BidderPool([BidderTarget(name, address) for name, address in targets.items()])
    try:
        request = openrtb_pb2.BidRequest(id="auction-1")
        request.imp.add(id="1")
        bidders = [c.bidder for c in pool.fan_out(request, 2000).candidates]
        counts = pool.counts()
    finally:
        pool.close()
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    return bidders, counts, [x for x in lines if x.get("event") == "bidder_failed"]


def test_a_bidder_that_closes_our_connection_is_told_from_one_that_is_down(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """On-call review: a bidder serving TLS to our plaintext pool (or one requiring client
    certificates) and one that is down both read `code: UNAVAILABLE, error_type:
    "_MultiThreadedRendezvous"`, grpc's private class."""
    files = make_tls_files(tmp_path)
    served = health_only_server("127.0.0.1:0", tls=load_server_tls(str(files.cert), str(files.key)))
    try:
        targets = {"tls": f"127.0.0.1:{served.port}", "gone": f"127.0.0.1:{_closed_port()}"}
        bidders, _, lines = _one_auction(targets, capsys)
    finally:
        served.stop(0)
    assert not bidders
    failed = {x["bidder"]: x for x in lines}
    assert failed["tls"]["reason"] == CONNECTION_CLOSED
    assert "reason" not in failed["gone"]
    assert {x["error_type"] for x in failed.values()} == {"RemoteError"}


def test_a_librarys_private_error_class_is_logged_by_its_public_name() -> None:
    with grpc.insecure_channel(f"127.0.0.1:{_closed_port()}") as channel:
        call = channel.unary_unary("/x.Y/Z").future(b"", timeout=5)
        with pytest.raises(grpc.RpcError) as failed:
            call.result()
    assert type(failed.value).__name__.startswith("_")
    assert failure_fields(failed.value)["error_type"] == "RpcError"


class _GarbledDetails(openrtb_pb2_grpc.BidderServiceServicer):
    """Fails every Bid with a google.rpc.Status trailer that does not parse."""

    def Bid(self, request: openrtb_pb2.BidRequest, context: Any) -> NoReturn:
        context.set_trailing_metadata((("grpc-status-details-bin", b"\xff\xff\xff"),))
        context.abort(grpc.StatusCode.INTERNAL, "x")
        raise AssertionError("abort raises")


def test_a_bidder_failing_with_garbled_details_fails_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Diff review: the details trailer's DecodeError escaped the fan-out, so one such bidder
    failed every auction, the other bidders' answers lost with it."""
    bad = grpc.server(futures.ThreadPoolExecutor(2))
    openrtb_pb2_grpc.add_BidderServiceServicer_to_server(_GarbledDetails(), bad)
    bad_port = bad.add_insecure_port("127.0.0.1:0")
    bad.start()
    good, _ = create_dsp(DspConfig(name="good", base_price=1.0))
    try:
        targets = {"bad": f"127.0.0.1:{bad_port}", "good": f"127.0.0.1:{good.port}"}
        bidders, counts, failed = _one_auction(targets, capsys)
    finally:
        bad.stop(0)
        good.stop(0)
    assert bidders == ["good"]
    assert counts[("bad", "error")] == 1
    assert [(x["bidder"], x["code"]) for x in failed] == [("bad", "INTERNAL")]
