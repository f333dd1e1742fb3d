"""The publisher workflow end to end, every service a real process started through its console
script (the same stack `make demo` runs), plus failures: the operator killed and restarted in the
middle, the SSP down during an impression, a bidder that hangs. The last test scans every
service's logs for the secrets and identifiers used along the way.

Tests run in file order and share one stack; each uses its own users."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from demo.processes import BIN, ServiceProcess
from demo.stack import PUBLISHER_DOMAIN, Lifetimes, Stack, bearer
from svc_common.grpc_client import error_info
from tests.support.node_client import check_operator
from tests.support.procs import wait_until
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONSENT = operator_pb2.PrivacySettings(transparency_notice_accepted=True)
LIFETIMES = Lifetimes(refresh_from_s=2, token_lifetime_s=60, refresh_lifetime_s=120)


class Seen:
    """Every identifier and secret the run touched, for the privacy scan."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def dii(self, value: str, normalised: str | None = None) -> None:
        digest = hashlib.sha256((normalised or value).encode()).digest()
        self.values |= {value, base64.b64encode(digest).decode(), digest.hex()}

    def add(self, *values: str) -> None:
        self.values |= {v for v in values if v}


SEEN = Seen()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("e2e"), LIFETIMES)
    try:
        s.provision()
        s.start_all()
        c = s.creds
        for cred in (c.publisher, c.sso_provider, c.ssp_reader, c.dsp_reader, c.optout_portal):
            SEEN.add(cred["api_key"], cred["secret"])
        SEEN.add(c.mapper["api_key"], c.mapper["secret"], c.ssp_publisher_key)
        SEEN.add(c.ssp_client_publisher_key, c.ssp_subscriber_key)
        yield s
    finally:
        s.stop_all()


class Tap:
    """A bid-stream subscriber collecting every bid request the SSP sends."""

    def __init__(self, stack: Stack) -> None:
        self.requests: dict[str, Any] = {}
        self._call = stack.ssp().StreamBidRequests(
            ssp_pb2.StreamBidRequestsRequest(site_domain=PUBLISHER_DOMAIN),
            metadata=bearer(stack.creds.ssp_subscriber_key),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for item in self._call:
                self.requests[item.bid_request.id] = item.bid_request
        except grpc.RpcError:
            return

    def get(self, auction_id: str) -> Any:
        wait_until(lambda: auction_id in self.requests, 3.0)
        return self.requests[auction_id]


@pytest.fixture(scope="module")
def tap(stack: Stack) -> Iterator[Tap]:
    t = Tap(stack)
    time.sleep(0.2)  # let the subscription register before the first auction
    yield t
    t._call.cancel()


def login(pub: Any, user: str, email: str = "", phone: str = "") -> Any:
    SEEN.dii(email.strip().lower() if email else phone)
    SEEN.add(email, phone)
    dii = {"email": email} if email else {"phone": phone}
    return pub.Login(publisher_pb2.LoginRequest(user_id=user, privacy_settings=CONSENT, **dii))


def token_of(pub: Any, user: str) -> Any:
    r = pub.GetAdvertisingToken(publisher_pb2.GetAdvertisingTokenRequest(user_id=user))
    SEEN.add(r.advertising_token)
    return r


def serve_ad(pub: Any, user: str) -> Any:
    return pub.ServeAd(
        publisher_pb2.ServeAdRequest(
            user_id=user, placement_id="top", page_domain=PUBLISHER_DOMAIN, floor_price=0.1
        )
    )


def eids_tokens(bid_request: Any) -> list[str]:
    return [u.id for e in bid_request.user.eids if e.source == "uidapi.com" for u in e.uids]


def raw_uid_of(stack: Stack, email: str) -> str:
    r = stack.operator().MapIdentity(
        operator_pb2.MapIdentityRequest(dii=[operator_pb2.Dii(email=email)]),
        metadata=bearer(stack.creds.mapper["api_key"]),
    )
    SEEN.add(r.results[0].raw_uid)
    return str(r.results[0].raw_uid)


def test_login_store_impression_carries_the_token_unchanged(stack: Stack, tap: Tap) -> None:
    pub = stack.publisher()
    raw_uid_of(stack, "erin@example.com")
    assert login(pub, "erin", email="erin@example.com").status == (
        publisher_pb2.LOGIN_STATUS_SUCCESS
    )
    token = token_of(pub, "erin")
    assert token.status == publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_SUCCESS
    assert token.advertising_token.startswith("A4")
    ad = serve_ad(pub, "erin")
    assert ad.token_sent
    assert ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID
    assert ad.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
    bid_request = tap.get(ad.auction_id)
    assert eids_tokens(bid_request) == [token.advertising_token]
    assert bid_request.user.eids[0].uids[0].atype == 3


def test_client_side_cookie_round_trip(stack: Stack, tap: Tap) -> None:
    web = stack.publisher("publisher-web")
    resp = login(web, "frank", email="frank@example.com")
    assert resp.status == publisher_pb2.LOGIN_STATUS_SUCCESS
    assert resp.cookie.name == "__uid_2"
    from urllib.parse import unquote

    identity = json.loads(unquote(resp.cookie.value))
    SEEN.add(identity["advertising_token"], identity["refresh_token"])
    SEEN.add(identity["refresh_response_key"])
    assert resp.cookie.expires == identity["refresh_expires"]
    ad = web.ServeAd(
        publisher_pb2.ServeAdRequest(
            cookie_value=resp.cookie.value, placement_id="side", page_domain=PUBLISHER_DOMAIN
        )
    )
    assert eids_tokens(tap.get(ad.auction_id)) == [identity["advertising_token"]]


def test_refresh_renews_then_optout_ends_the_chain(stack: Stack, tap: Tap) -> None:
    pub = stack.publisher()
    login(pub, "grace", email="grace@example.com")
    raw_uid_of(stack, "grace@example.com")
    first = token_of(pub, "grace").advertising_token
    time.sleep(LIFETIMES.refresh_from_s + 0.3)
    renewed = token_of(pub, "grace")
    assert renewed.status == publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_SUCCESS
    assert renewed.advertising_token != first

    stack.operator().OptOut(
        operator_pb2.OptOutRequest(dii=operator_pb2.Dii(email="grace@example.com")),
        metadata=bearer(stack.creds.optout_portal["api_key"]),
    )
    start = time.monotonic()

    def ssp_drops() -> bool:
        ad = serve_ad(pub, "grace")
        return bool(ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_OPTOUT) or (
            not ad.token_sent
        )

    assert wait_until(ssp_drops, 1.0, interval_s=0.05), "SSP kept the token over 1 s"
    assert time.monotonic() - start <= 1.5

    def ended() -> bool:
        return bool(
            token_of(pub, "grace").status != publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_SUCCESS
        )

    assert wait_until(ended, LIFETIMES.refresh_from_s + 4)
    assert token_of(pub, "grace").status in (
        publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_OPTOUT,
        publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY,
    )
    ad = serve_ad(pub, "grace")
    assert not ad.token_sent and eids_tokens(tap.get(ad.auction_id)) == []
    assert login(pub, "grace", email="grace@example.com").status == (
        publisher_pb2.LOGIN_STATUS_OPTOUT
    )


def test_refresh_optout_test_identity_next_impression_has_no_token(stack: Stack) -> None:
    pub = stack.publisher()
    assert login(pub, "ro", email="refresh-optout@example.com").status == (
        publisher_pb2.LOGIN_STATUS_SUCCESS
    )
    time.sleep(LIFETIMES.refresh_from_s + 0.3)
    assert wait_until(
        lambda: token_of(pub, "ro").status != publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_SUCCESS,
        4.0,
    )
    assert not serve_ad(pub, "ro").token_sent


def test_operator_killed_and_restarted_in_the_middle(stack: Stack, tap: Tap) -> None:
    pub = stack.publisher()
    login(pub, "heidi", email="heidi@example.com")
    before = token_of(pub, "heidi").advertising_token
    port = stack.procs["operator"].port
    stack.stop("operator", hard=True)
    # Operator down: the still-valid token keeps serving, the SSP keeps its last good keys.
    time.sleep(LIFETIMES.refresh_from_s + 0.3)
    down = token_of(pub, "heidi")
    assert down.status == publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_SUCCESS
    assert down.advertising_token == before
    ad = serve_ad(pub, "heidi")
    assert ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID
    with pytest.raises(grpc.RpcError) as caught:
        login(pub, "ivan", email="ivan@example.com")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value) is not None

    stack.start_operator(port=port)
    # Back: the opt-out recorded before the crash still holds, and refresh works again.
    assert login(pub, "grace", email="grace@example.com").status == (
        publisher_pb2.LOGIN_STATUS_OPTOUT
    )
    assert wait_until(lambda: token_of(pub, "heidi").advertising_token != before, 6.0)
    assert login(pub, "ivan", email="ivan@example.com").status == (
        publisher_pb2.LOGIN_STATUS_SUCCESS
    )


def test_hanging_bidder_does_not_hold_the_auction(stack: Stack, tmp_path: Path) -> None:
    hanging = ServiceProcess(
        ["uid2-dsp", "serve", "--listen", "127.0.0.1:0", "--name", "stuck", "--delay-ms", "30000"]
    ).wait_ready()
    ssp = ServiceProcess(
        [
            "uid2-ssp", "serve", "--data-dir", str(stack.data_dir / "ssp"),
            "--listen", "127.0.0.1:0", "--tmax-ms", "200",
            "--bidder", f"good={stack.procs['dsp'].address}",
            "--bidder", f"stuck={hanging.address}",
        ]
    ).wait_ready()  # fmt: skip
    stack.stopped += [hanging, ssp]
    try:
        with grpc.insecure_channel(ssp.address) as channel:
            stub = ssp_pb2_grpc.SspServiceStub(channel)
            started = time.monotonic()
            resp = stub.SubmitImpression(
                ssp_pb2.SubmitImpressionRequest(
                    page_domain=PUBLISHER_DOMAIN, placement_id="p", floor_price=0.1
                ),
                metadata=bearer(stack.creds.ssp_publisher_key),
                timeout=5,
            )
            elapsed = time.monotonic() - started
        assert resp.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
        assert resp.winning_bid.bidder == "good"
        assert elapsed < 1.5, f"auction took {elapsed:.2f} s with tmax 200 ms"
    finally:
        ssp.terminate()
        hanging.kill()


def test_ssp_down_during_an_impression(stack: Stack) -> None:
    pub = stack.publisher()
    login(pub, "judy", email="judy@example.com")
    stack.stop("ssp", hard=True)
    with pytest.raises(grpc.RpcError) as caught:
        serve_ad(pub, "judy")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info is not None and info.reason
    # Nothing lost: the identity is still there for the next impression.
    assert token_of(pub, "judy").status == publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_SUCCESS


def test_node_client_generates_and_refreshes(stack: Stack) -> None:
    report = check_operator(stack.procs["operator"].address, stack.creds.publisher["api_key"])
    assert report["ok"] and "refresh" in report["checks"] and "unauthenticated" in report["checks"]


def test_buf_curl_against_the_operator_with_reflection(stack: Stack) -> None:
    """The README's `buf curl` example, run for real."""
    result = subprocess.run(
        [
            str(BIN / "buf"), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
            "--data", '{"refresh_token": "not-a-token"}',
            f"http://{stack.procs['operator'].address}/uid2.operator.v1.OperatorService/RefreshToken",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "REFRESH_TOKEN_STATUS_INVALID_TOKEN"
    # buf asks grpc.reflection.v1 first: answered, not an UNIMPLEMENTED line per call.
    assert "UNKNOWN_METHOD" not in stack.procs["operator"].log_text()


def _stored_by_publishers(stack: Stack) -> list[str]:
    """What the publishers hold and no RPC shows: server-side users' refresh tokens and
    response keys, and the DII hashes the tables are keyed by."""
    values: list[str] = []
    for path in stack.data_dir.rglob("publisher.sqlite3"):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for row in db.execute(
                "SELECT advertising_token, refresh_token, refresh_response_key, dii_key"
                " FROM identities UNION ALL SELECT dii_key, '', '', '' FROM operator_optouts"
            ):
                values.extend(str(v) for v in row if v)
        finally:
            db.close()
    return values


def test_logs_of_every_service_carry_no_identifier_or_secret(stack: Stack) -> None:
    stored = _stored_by_publishers(stack)
    assert len(stored) >= 4  # at least one stored identity was read
    SEEN.add(*stored)
    logs = stack.logs()
    assert '"event": "rpc"' in logs or '"event":"rpc"' in logs  # the scan read real logs
    assert len(SEEN.values) > 30
    leaked = sorted(v for v in SEEN.values if v in logs)
    assert not leaked, f"{len(leaked)} sensitive values found in service logs"
