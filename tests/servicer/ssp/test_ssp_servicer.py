"""SspServicer through grpc_testing. grpc_testing runs no interceptors (and its context has no
abort_with_status), so the failures are checked as the ServiceError the servicer raises: its kind
and reason are what the production edge (svc_common/aio_edge.py) turns into a status with an
ErrorInfo, and tests/integration/common/test_grpc_edge.py checks that mapping on real servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest

from ssp_svc.auction import Candidate
from ssp_svc.bidders import FanOutResult
from ssp_svc.exchange import Exchange
from ssp_svc.servicer import SspServicer
from ssp_svc.store.accounts import AccountKind, SqliteAccountStore
from ssp_svc.stream_hub import StreamHub
from svc_common.clock import SystemClock
from svc_common.errors import ErrorKind, ServiceError
from uid2.ssp.v1 import openrtb_pb2, ssp_pb2

SERVICE = ssp_pb2.DESCRIPTOR.services_by_name["SspService"]
SUBMIT = SERVICE.methods_by_name["SubmitImpression"]
STREAM = SERVICE.methods_by_name["StreamBidRequests"]


class _Context:
    """What the servicer reads from a call's context before it can fail: the metadata."""

    def __init__(
        self, metadata: tuple[tuple[str, str], ...], time_remaining: float | None = None
    ) -> None:
        self._metadata = metadata
        self._time_remaining = time_remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._time_remaining


def fan_out(req: openrtb_pb2.BidRequest, tmax_ms: int) -> FanOutResult:
    return FanOutResult([Candidate("dsp-a", 2.0, "b1", "<ad>", "cr1"), Candidate("dsp-b", 1.0)])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=SystemClock())
    _, pub_key = store.add("pub", AccountKind.PUBLISHER, ("example.com",))
    _, other_key = store.add(
        "other", AccountKind.PUBLISHER, ("other.example.net", "b\u00fccher.example")
    )
    _, sub_key = store.add("analytics", AccountKind.SUBSCRIBER)
    hub: StreamHub[openrtb_pb2.BidRequest] = StreamHub(capacity=8)
    exchange = Exchange(checker=None, fan_out=fan_out, hub=hub, clock=SystemClock(), tmax_ms=100)
    servicer = SspServicer(exchange, store, hub)
    server = grpc_testing.server_from_dictionary(
        {SERVICE: servicer}, grpc_testing.strict_real_time()
    )
    yield {
        "server": server,
        "servicer": servicer,
        "pub": pub_key,
        "other": other_key,
        "sub": sub_key,
        "hub": hub,
    }
    hub.close()
    store.close()


def _request(**fields: Any) -> ssp_pb2.SubmitImpressionRequest:
    return ssp_pb2.SubmitImpressionRequest(
        page_domain=fields.pop("page_domain", "www.example.com"),
        placement_id="top",
        floor_price=fields.pop("floor_price", 1.5),
        **fields,
    )


def _metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),) if key else ()


def submit(env: dict[str, Any], key: str | None, **fields: Any) -> tuple[Any, Any, str]:
    rpc = env["server"].invoke_unary_unary(SUBMIT, _metadata(key), _request(**fields), None)
    response, _, code, details = rpc.termination()
    return response, code, details


def test_submit_fills_with_the_highest_bid(env: dict[str, Any]) -> None:
    response, code, _ = submit(env, env["pub"], advertising_token="Tok+en/==")
    assert code == grpc.StatusCode.OK
    assert response.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
    assert response.winning_bid.bidder == "dsp-a" and response.winning_bid.price == 2.0
    assert response.winning_bid.ad_markup == "<ad>" and response.winning_bid.creative_id == "cr1"
    assert response.token_disposition == ssp_pb2.TOKEN_DISPOSITION_PASSED_THROUGH
    assert response.bids_received == 2 and len(response.auction_id) == 32


def test_no_fill_and_absent_token(env: dict[str, Any]) -> None:
    response, code, _ = submit(env, env["pub"], floor_price=5.0)
    assert code == grpc.StatusCode.OK
    assert response.outcome == ssp_pb2.AUCTION_OUTCOME_NO_FILL
    assert not response.HasField("winning_bid")
    assert response.token_disposition == ssp_pb2.TOKEN_DISPOSITION_ABSENT


@pytest.mark.parametrize(
    ("key", "fields", "kind", "reason"),
    [
        (None, {}, ErrorKind.UNAUTHENTICATED, "MISSING_API_KEY"),
        ("UID2-SSP-abc.def", {}, ErrorKind.UNAUTHENTICATED, "UNKNOWN_API_KEY"),
        ("sub", {}, ErrorKind.PERMISSION_DENIED, "NOT_A_PUBLISHER"),
        ("pub", {"advertising_token": "x" * 501}, ErrorKind.INVALID_ARGUMENT, "TOKEN_TOO_LONG"),
        ("pub", {"page_domain": "evil.org"}, ErrorKind.PERMISSION_DENIED,
         "INVENTORY_NOT_ALLOWED"),
        ("pub", {"floor_price": -2.0}, ErrorKind.INVALID_ARGUMENT, "INVALID_FLOOR"),
        # A domain-only publisher has no app inventory to sell.
        ("pub", {"page_domain": "", "app_bundle": "com.x"}, ErrorKind.PERMISSION_DENIED,
         "INVENTORY_NOT_ALLOWED"),
    ],
)  # fmt: skip
def test_submit_errors(
    env: dict[str, Any], key: str | None, fields: dict[str, Any], kind: ErrorKind, reason: str
) -> None:
    api_key = env.get(key, key) if key else None
    servicer: SspServicer = env["servicer"]
    with pytest.raises(ServiceError) as raised:
        servicer.SubmitImpression(_request(**fields), _Context(_metadata(api_key)))
    assert (raised.value.kind, raised.value.reason) == (kind, reason)
    # The message becomes the status's details: it must not echo the client's token back.
    assert "x" * 20 not in raised.value.message


def test_inventory_is_read_as_it_was_registered_with_spaces_around(tmp_path: Path) -> None:
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=SystemClock())
    try:
        account, _ = store.add("apps", AccountKind.PUBLISHER, (), ("com.example.news",))
        exchange = Exchange(
            checker=None, fan_out=fan_out, hub=StreamHub(), clock=SystemClock(), tmax_ms=100
        )
        imp = exchange.validate(
            account,
            page_domain="",
            app_bundle=" com.example.news ",
            placement_id="top",
            floor_price=1.0,
            token="",
        )
        assert imp.app_bundle == "com.example.news"
    finally:
        store.close()


def test_a_caller_with_no_time_for_an_auction_gets_none(env: dict[str, Any]) -> None:
    servicer: SspServicer = env["servicer"]
    sub = env["hub"].subscribe()
    with pytest.raises(ServiceError) as raised:
        servicer.SubmitImpression(_request(), _Context(_metadata(env["pub"]), 0.004))
    assert (raised.value.kind, raised.value.reason) == (
        ErrorKind.DEADLINE_EXCEEDED,
        "CALLER_DEADLINE",
    )
    assert sub.get(0.05) is None  # no bid request went out
    response = servicer.SubmitImpression(_request(), _Context(_metadata(env["pub"]), 0.05))
    assert response.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
    captured = sub.get(1)
    assert captured is not None and captured.item.tmax == 45  # its 50 ms less the margin


def _stream(env: dict[str, Any], key: str, **filters: str) -> Any:
    return env["server"].invoke_unary_stream(
        STREAM,
        (("authorization", f"Bearer {key}"),),
        ssp_pb2.StreamBidRequestsRequest(**filters),
        None,
    )


def test_stream_delivers_bid_requests_filtered(env: dict[str, Any]) -> None:
    everything = _stream(env, env["sub"])
    only_other = _stream(env, env["sub"], site_domain="OTHER.example.net")
    own = _stream(env, env["other"])  # a publisher key sees only its own inventory
    hub: StreamHub[Any] = env["hub"]
    assert wait_subscribers(hub, 3)
    r1, _, _ = submit(env, env["pub"], advertising_token="T1")
    r2, _, _ = submit(env, env["other"], page_domain="other.example.net")
    got = [everything.take_response(), everything.take_response()]
    assert [g.bid_request.id for g in got] == [r1.auction_id, r2.auction_id]
    assert got[0].bid_request.user.eids[0].uids[0].id == "T1"
    assert got[0].dropped_since_last == 0 and got[0].sent_at > 0
    assert only_other.take_response().bid_request.id == r2.auction_id
    assert own.take_response().bid_request.id == r2.auction_id
    for rpc in (everything, only_other, own):
        rpc.cancel()


def wait_subscribers(hub: StreamHub[Any], n: int) -> bool:
    from tests.support.procs import wait_until

    return wait_until(lambda: hub.subscriber_count >= n, 2)


@pytest.mark.parametrize(
    ("page_domain", "site_domain"),
    [("b\u00fccher.example", "b\u00fccher.example"), ("other.example.net", "Other.Example.NET.")],
)
def test_a_site_filter_matches_as_the_page_domain_is_normalised(
    env: dict[str, Any], page_domain: str, site_domain: str
) -> None:
    """Review: SubmitImpression sends page_domain on normalised (punycode, no trailing dot);
    a filter compared as typed never matched the same site."""
    filtered = _stream(env, env["sub"], site_domain=site_domain)
    assert wait_subscribers(env["hub"], 1)
    response, code, _ = submit(env, env["other"], page_domain=page_domain)
    assert code == grpc.StatusCode.OK
    assert filtered.take_response().bid_request.id == response.auction_id
    filtered.cancel()


class _EndedCall(_Context):
    """A call cancelled as it opened: no longer active, and it runs no callback added now."""

    def is_active(self) -> bool:
        return False

    def add_callback(self, _callback: Any) -> bool:
        return False


def test_a_stream_ended_as_it_opened_leaves_nothing_watched(env: dict[str, Any]) -> None:
    # The reaper's watch was ended by a callback; one added to an ended call is never run, and
    # 205 of 3,000 streams cancelled within 1.5 ms of opening stayed watched for good.
    servicer: SspServicer = env["servicer"]
    call = _EndedCall((("authorization", f"Bearer {env['sub']}"),))
    assert list(servicer.StreamBidRequests(ssp_pb2.StreamBidRequestsRequest(), call)) == []
    assert servicer._reaper._watched == {}
