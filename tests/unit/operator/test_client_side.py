"""ClientSideGenerator's refusals that the HTTP tests cannot reach with a well-formed page: an
Origin header no URL parser or domain check accepts, and a payload over the size cap."""

from __future__ import annotations

import json

import pytest

from demo.page import b64_sha256, page_request
from operator_svc import admin
from operator_svc.domain.client_side import (
    MAX_PAYLOAD_CHARS,
    REQUEST_TOO_OLD,
    ClientSideRequest,
    origin_host,
)
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.operator.conftest import T0, Env

SITE = 12  # conftest's "delegating" site: pub.example, com.pub.app


def _keypair(env: Env) -> dict[str, str]:
    pair = admin.add_keypair(env.store, SITE, T0, admin.default_rng)
    env.op.sync_now()
    return pair


def _request(
    pair: dict[str, str], payload: bytes, origin: str | None, sent_ms: int = T0
) -> ClientSideRequest:
    page = page_request(pair["public_key"], pair["subscription_id"], payload, timestamp_ms=sent_ms)
    body = page.body
    return ClientSideRequest(
        subscription_id=body["subscription_id"],
        payload=body["payload"],
        iv=body["iv"],
        public_key=body["public_key"],
        timestamp_ms=body["timestamp"],
        origin=origin,
    )


@pytest.mark.parametrize(
    "origin",
    [
        "https://[::1",  # urlsplit: "Invalid IPv6 URL"
        "https://pub_example",  # a host, but not a domain name
        "https://" + "a" * 300 + ".pub.example",  # too long to be one
        "https://-bad-.pub.example",
    ],
)
def test_an_origin_that_is_not_a_domain_is_no_host(origin: str) -> None:
    assert origin_host(origin) is None


def test_a_malformed_origin_is_refused_as_an_origin_not_a_crash(env: Env) -> None:
    pair = _keypair(env)
    payload = json.dumps({"email_hash": b64_sha256("a@b.com")}).encode()
    ok = env.op.client_side.generate(_request(pair, payload, "https://www.pub.example"))
    assert ok[1].site_id == SITE
    for origin in ("https://[::1", "https://pub_example"):
        with pytest.raises(ServiceError) as exc:
            env.op.client_side.generate(_request(pair, payload, origin))
        assert (exc.value.kind, exc.value.reason) == (
            ErrorKind.PERMISSION_DENIED,
            "INVALID_HTTP_ORIGIN",
        )


def test_a_payload_over_the_cap_is_refused_before_it_is_opened(env: Env) -> None:
    # Properly sealed for this subscription: only the size check refuses it.
    pair = _keypair(env)
    padded = {"email_hash": b64_sha256("big@example.com"), "pad": "x" * MAX_PAYLOAD_CHARS}
    request = _request(pair, json.dumps(padded).encode(), "https://pub.example")
    assert len(request.payload) > MAX_PAYLOAD_CHARS
    with pytest.raises(ServiceError) as exc:
        env.op.client_side.generate(request)
    assert (exc.value.kind, exc.value.reason) == (ErrorKind.INVALID_ARGUMENT, "BAD_PAYLOAD")


def test_a_request_is_answered_within_a_minute_of_the_operators_clock_either_way(
    env: Env,
) -> None:
    # The official operator's bound: Duration.toMinutes() >= 1 is refused.
    pair = _keypair(env)
    payload = json.dumps({"email_hash": b64_sha256("a@b.com")}).encode()
    for skew_ms in (59_999, -59_999):
        request = _request(pair, payload, "https://pub.example", T0 + skew_ms)
        assert env.op.client_side.generate(request)[1].site_id == SITE
    for skew_ms in (60_000, -60_000):
        with pytest.raises(ServiceError) as exc:
            env.op.client_side.generate(
                _request(pair, payload, "https://pub.example", T0 + skew_ms)
            )
        assert (exc.value.kind, exc.value.reason) == (ErrorKind.INVALID_ARGUMENT, REQUEST_TOO_OLD)
