"""ServeAd through the real SSP (ssp_svc), which decrypts tokens with operator keys."""

from __future__ import annotations

import contextlib
import io
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from publisher_svc.model import StorageMode
from ssp_svc.cli import main as ssp_cli
from ssp_svc.config import SspConfig
from ssp_svc.server import create_server as create_ssp
from svc_common.grpc_client import error_info
from svc_common.logging import configure_logging
from tests.integration.publisher.conftest import World, wait_for
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2 as pb
from uid2.ssp.v1 import ssp_pb2

HOUR = 3_600_000
OK = operator_pb2.PrivacySettings(transparency_notice_accepted=True)


@pytest.fixture
def real_ssp(world: World) -> Iterator[tuple[int, str]]:
    ssp_dir = world.tmp / "ssp"
    ssp_dir.mkdir()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = ssp_cli(
            ["publisher", "add", "--data-dir", str(ssp_dir), "--name", "pub",
             "--domain", "news.example.com", "--app", "com.example.news"]
        )  # fmt: skip
    assert rc == 0
    api_key = json.loads(out.getvalue())["api_key"]
    served, port = create_ssp(
        SspConfig(
            listen="127.0.0.1:0",
            data_dir=ssp_dir,
            operator=world.op_address,
            operator_api_key=world.keys["ssp"],
        ),
        clock=world.clock,
    )
    yield port, api_key
    served.stop(0)


def _ad(stub: Any, user: str) -> pb.ServeAdResponse:
    response: pb.ServeAdResponse = stub.ServeAd(
        pb.ServeAdRequest(user_id=user, placement_id="slot-1", page_domain="news.example.com")
    )
    return response


def test_serve_ad_through_the_real_ssp(world: World, real_ssp: tuple[int, str]) -> None:
    port, api_key = real_ssp
    _, stub = world.publisher(
        world.config("real-ssp", ssp_address=f"127.0.0.1:{port}", ssp_api_key=api_key)
    )
    stub.Login(pb.LoginRequest(user_id="al", email="al@example.com", privacy_settings=OK))
    # the SSP loads keys in the background: wait until it decrypts
    assert wait_for(
        lambda: _ad(stub, "al").token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID, 10
    )
    ad = _ad(stub, "al")
    assert ad.token_sent and ad.auction_id
    assert ad.outcome == ssp_pb2.AUCTION_OUTCOME_NO_FILL  # no bidders configured

    stub.Login(
        pb.LoginRequest(user_id="ro", email="refresh-optout@example.com", privacy_settings=OK)
    )
    assert _ad(stub, "ro").token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID
    world.clock.advance(HOUR)
    ad = _ad(stub, "ro")  # the refresh answers opt-out: no token goes out
    assert not ad.token_sent and ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_ABSENT
    assert _ad(stub, "al").token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID  # refreshed

    stub.Logout(pb.LogoutRequest(user_id="al"))
    assert _ad(stub, "al").token_disposition == ssp_pb2.TOKEN_DISPOSITION_ABSENT


def test_an_over_long_cookie_token_loses_no_impression(
    world: World, real_ssp: tuple[int, str]
) -> None:
    port, api_key = real_ssp
    _, stub = world.publisher(
        world.config(
            "tampered",
            ssp_address=f"127.0.0.1:{port}",
            ssp_api_key=api_key,
            storage_mode=StorageMode.CLIENT,
        )
    )
    r = stub.Login(pb.LoginRequest(user_id="tt", email="tt@example.com", privacy_settings=OK))
    body = json.loads(urllib.parse.unquote(r.cookie.value))
    body["advertising_token"] = "A4" + "x" * 900  # 902 chars: the SSP refuses over 500
    bad = urllib.parse.quote(json.dumps(body))
    ad = stub.ServeAd(
        pb.ServeAdRequest(cookie_value=bad, placement_id="slot-1", page_domain="news.example.com")
    )
    assert ad.auction_id and not ad.token_sent and ad.clear_cookie
    assert ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_ABSENT


def test_the_ssp_refusing_the_callers_inventory_passes_through(
    world: World, real_ssp: tuple[int, str]
) -> None:
    port, api_key = real_ssp
    _, stub = world.publisher(
        world.config("inventory", ssp_address=f"127.0.0.1:{port}", ssp_api_key=api_key)
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.ServeAd(pb.ServeAdRequest(placement_id="s", page_domain="not-ours.example.org"))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(exc.value)
    assert info is not None and info.reason == "INVENTORY_NOT_ALLOWED"
    # a key the SSP does not know is the publisher's misconfiguration, with the SSP's reason
    _, wrong = world.publisher(
        world.config("wrong-key", ssp_address=f"127.0.0.1:{port}", ssp_api_key="nope")
    )
    with pytest.raises(grpc.RpcError) as exc:
        wrong.ServeAd(pb.ServeAdRequest(placement_id="s", page_domain="news.example.com"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(exc.value)
    assert info is not None and info.reason == "SSP_REJECTED"
    assert info.metadata["peerCode"] == "UNAUTHENTICATED" and info.metadata["peerReason"]


def test_app_inventory_reaches_the_ssp(world: World, real_ssp: tuple[int, str]) -> None:
    port, api_key = real_ssp
    _, stub = world.publisher(
        world.config("app", ssp_address=f"127.0.0.1:{port}", ssp_api_key=api_key)
    )
    ad = stub.ServeAd(pb.ServeAdRequest(placement_id="ctv-1", app_bundle="com.example.news"))
    assert ad.auction_id and ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_ABSENT
    with pytest.raises(grpc.RpcError) as exc:  # an app the publisher did not register
        stub.ServeAd(pb.ServeAdRequest(placement_id="ctv-1", app_bundle="com.other.app"))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(exc.value)
    assert info is not None and info.reason == "INVENTORY_NOT_ALLOWED"
    with pytest.raises(grpc.RpcError) as exc:
        stub.ServeAd(
            pb.ServeAdRequest(
                placement_id="p", page_domain="news.example.com", app_bundle="com.example.news"
            )
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(exc.value)
    assert info is not None and info.reason == "CONFLICTING_INVENTORY"


def test_one_impression_reads_the_same_in_the_publishers_and_the_ssps_logs(
    world: World, real_ssp: tuple[int, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The caller's x-request-id reaches the SSP's line for the impression, and the publisher's
    ServeAd line carries the SSP's auction id: one impression can be followed across both."""
    port, api_key = real_ssp
    _, stub = world.publisher(
        world.config("trace", ssp_address=f"127.0.0.1:{port}", ssp_api_key=api_key)
    )
    configure_logging(service="test")
    capsys.readouterr()
    ad = stub.ServeAd(
        pb.ServeAdRequest(placement_id="slot-1", page_domain="news.example.com"),
        metadata=(("x-request-id", "trace-7f3a"),),
    )
    assert ad.auction_id
    lines: list[dict[str, Any]] = []

    def logged() -> bool:
        for text in capsys.readouterr().err.splitlines():
            line = json.loads(text) if text.startswith("{") else {}
            if line.get("event") == "rpc" and line.get("request_id") == "trace-7f3a":
                lines.append(line)
        return len(lines) >= 2

    assert wait_for(logged, 5.0)
    by_method = {str(line["method"]).rsplit("/", 1)[-1]: line for line in lines}
    assert by_method["ServeAd"]["auction_id"] == ad.auction_id
    assert by_method["SubmitImpression"]["code"] == "OK"
