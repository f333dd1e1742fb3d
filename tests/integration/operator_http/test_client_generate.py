"""POST /v2/token/client-generate on a real operator: a page (tests/support/cstg_page.py, written
from the protocol) gets an identity the official SDK decrypts, refreshes it, and is refused for
a wrong origin, app, subscription or a tampered request."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from uid2_client import BidstreamClient, DecryptionStatus

from demo.page import PageRequest, b64_sha256, page_request
from operator_svc import admin
from operator_svc.store import OperatorStore
from tests.integration.operator_http.conftest import HttpLive, Reply, start
from uid2.operator.v1 import operator_pb2 as pb
from uid2_crypto.keys import parse_key_container_json
from uid2_crypto.tokens import DecryptionStatus as OurStatus
from uid2_crypto.tokens import TokenDecoder

PATH = "/v2/token/client-generate"
ORIGIN = "https://news.example.com"
SITE = 100  # the "all" client's site (conftest.start)


@dataclass
class Cstg:
    live: HttpLive
    subscription_id: str
    public_key: str
    store: OperatorStore

    def post(
        self,
        request: PageRequest | dict[str, Any] | bytes,
        origin: str | None = ORIGIN,
    ) -> Reply:
        headers = {"Content-Type": "text/plain"}
        if origin is not None:
            headers["Origin"] = origin
        if isinstance(request, PageRequest):
            body = request.encoded()
        elif isinstance(request, dict):
            body = json.dumps(request).encode()
        else:
            body = request
        return self.live.raw(PATH, body, headers=headers)

    def page(self, payload: dict[str, Any] | bytes, **kw: Any) -> PageRequest:
        return page_request(self.public_key, self.subscription_id, payload, **kw)

    def generate(self, email: str, origin: str = ORIGIN) -> Any:
        request = self.page({"email_hash": b64_sha256(email)})
        reply = self.post(request, origin)
        assert reply.status == 200, reply.body
        return request.open_answer(reply.body)


def _synced(live: HttpLive) -> None:
    """The serving operator picks up the store's changes now, not at its next sync tick."""
    op = live.served.operator
    assert op is not None
    op.sync_now()


@pytest.fixture(scope="module")
def cstg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cstg]:
    tmp = tmp_path_factory.mktemp("cstg")
    live = start(tmp)
    store = OperatorStore.open(tmp)
    admin.add_site(
        store, SITE, "news", ["news.example.com"], ["com.example.news"], 0, admin.default_rng
    )
    pair = admin.add_keypair(store, SITE, int(time.time() * 1000), admin.default_rng)
    _synced(live)
    yield Cstg(live, pair["subscription_id"], pair["public_key"], store)
    store.close()
    live.channel.close()
    live.served.stop(1.0)


def _sdk_decrypt(live: HttpLive, token: str, domain: str | None) -> Any:
    c = live.clients["reader"]
    client = BidstreamClient(live.base_url, c.api_key, c.secret)
    assert client.refresh().success
    return client.decrypt_token_into_raw_uid(token, domain)


def _raw_uid(live: HttpLive, email: str) -> str:
    resp = live.stub.MapIdentity(
        pb.MapIdentityRequest(dii=[pb.Dii(email=email)]), metadata=live.grpc_md("all"), timeout=10
    )
    return str(resp.results[0].raw_uid)


def test_page_gets_an_identity_the_sdk_decrypts_as_client_side_generated(cstg: Cstg) -> None:
    answer = cstg.generate("jane@example.com")
    assert answer["status"] == "success"
    identity = answer["body"]
    assert set(identity) == {
        "advertising_token",
        "refresh_token",
        "identity_expires",
        "refresh_expires",
        "refresh_from",
        "refresh_response_key",
    }
    result = _sdk_decrypt(cstg.live, identity["advertising_token"], "news.example.com")
    assert result.status is DecryptionStatus.SUCCESS
    assert result.uid == _raw_uid(cstg.live, "jane@example.com")
    assert result.site_id == SITE
    assert result.is_client_side_generated


def test_our_decryptor_checks_the_domain_a_client_side_token_is_used_on(cstg: Cstg) -> None:
    token = cstg.generate("dom@example.com")["body"]["advertising_token"]
    status, keys = cstg.live.call("reader", "/v2/key/bidstream", {})
    assert status == 200
    decoder = TokenDecoder.from_container(parse_key_container_json(keys["body"]))
    now = time.time_ns() // 1_000_000
    assert decoder.decrypt(token, now, domain_or_app="news.example.com").success
    assert decoder.decrypt(token, now, domain_or_app="com.example.news").success
    refused = decoder.decrypt(token, now, domain_or_app="other.example.org")
    assert refused.status is OurStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED


def test_the_site_validates_its_client_side_generated_token(cstg: Cstg) -> None:
    # The domain check of a client-side token is the bid stream's: validation has no page.
    token = cstg.generate("validate@example.com")["body"]["advertising_token"]
    live = cstg.live
    for email, valid in (("validate@example.com", True), ("other@example.com", False)):
        resp = live.stub.ValidateToken(
            pb.ValidateTokenRequest(token=token, dii=pb.Dii(email=email)),
            metadata=live.grpc_md("all"),
            timeout=10,
        )
        assert resp.valid is valid


def test_refresh_keeps_the_client_side_mark(cstg: Cstg) -> None:
    identity = cstg.generate("refresh-me@example.com")["body"]
    reply = cstg.live.raw("/v2/token/refresh", identity["refresh_token"].encode())
    assert reply.status == 200
    key = base64.b64decode(identity["refresh_response_key"])
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sealed = base64.b64decode(reply.body)
    refreshed = json.loads(AESGCM(key).decrypt(sealed[:12], sealed[12:], None))
    assert refreshed["status"] == "success"
    result = _sdk_decrypt(cstg.live, refreshed["body"]["advertising_token"], "news.example.com")
    assert result.status is DecryptionStatus.SUCCESS and result.is_client_side_generated


@pytest.mark.parametrize(
    "origin",
    ["https://news.example.com", "https://www.news.example.com:8443", "http://NEWS.example.com"],
)
def test_pages_on_the_site_domains_are_answered(cstg: Cstg, origin: str) -> None:
    assert cstg.generate("origin@example.com", origin)["status"] == "success"


@pytest.mark.parametrize(
    "origin",
    [None, "null", "https://example.com", "https://badnews.example.com", "https://evil.test"],
)
def test_pages_elsewhere_are_refused_with_403(cstg: Cstg, origin: str | None) -> None:
    reply = cstg.post(cstg.page({"email_hash": b64_sha256("x@example.com")}), origin)
    assert reply.status == 403
    assert reply.json() == {"status": "invalid_http_origin", "message": "unexpected http origin"}
    assert reply.headers["access-control-allow-origin"] == "*"


def test_an_app_is_checked_by_its_name_not_an_origin(cstg: Cstg) -> None:
    ok = cstg.page({"email_hash": b64_sha256("app@example.com")}, app_name="com.example.news")
    reply = cstg.post(ok, origin=None)
    assert reply.status == 200
    assert ok.open_answer(reply.body)["status"] == "success"
    other = cstg.page({"email_hash": b64_sha256("app@example.com")}, app_name="com.evil.app")
    refused = cstg.post(other, origin=ORIGIN)
    assert refused.status == 403
    assert refused.json()["status"] == "invalid_app_name"


@pytest.mark.parametrize("timestamp_as_text", [False, True])
def test_a_mobile_sdk_request_is_answered(cstg: Cstg, timestamp_as_text: bool) -> None:
    # The UID2 iOS and Android SDKs put the app name in the additional data
    # (`[timestamp,"app"]`), as the official operator opens it; Android sends the timestamp as
    # a JSON string ("timestamp" to now.toString()), which the official operator reads as a
    # number.
    request = cstg.page(
        {"email_hash": b64_sha256("mobile@example.com"), "optout_check": 1},
        app_name="com.example.news",
        timestamp_as_text=timestamp_as_text,
    )
    assert isinstance(request.body["timestamp"], str) is timestamp_as_text
    reply = cstg.post(request, origin=None)
    assert reply.status == 200, reply.body
    answer = request.open_answer(reply.body)
    assert answer["status"] == "success"
    result = _sdk_decrypt(cstg.live, answer["body"]["advertising_token"], "com.example.news")
    assert result.status == DecryptionStatus.SUCCESS
    assert result.uid == _raw_uid(cstg.live, "mobile@example.com")


def test_an_app_request_sealed_without_its_name_does_not_open(cstg: Cstg) -> None:
    # The app name is authenticated: one sealed for the bare timestamp is refused.
    request = cstg.page({"email_hash": b64_sha256("mobile@example.com")})
    body = dict(request.body, app_name="com.example.news")
    refused = cstg.post(body, origin=None)
    assert _error(refused) == (400, "client_error", "payload decryption failed")


def test_an_opted_out_user_gets_optout_and_no_token(cstg: Cstg) -> None:
    assert cstg.generate("optout@example.com") == {"status": "optout"}
    status, _ = cstg.live.call("all", "/v2/token/logout", {"email": "leaver@example.com"})
    assert status == 200
    assert cstg.generate("leaver@example.com") == {"status": "optout"}


def test_a_phone_hash_is_answered(cstg: Cstg) -> None:
    request = cstg.page({"phone_hash": b64_sha256("+14155550100")})
    reply = cstg.post(request)
    assert reply.status == 200
    assert request.open_answer(reply.body)["status"] == "success"


def _error(reply: Reply) -> tuple[int, str, str]:
    body = reply.json()
    return reply.status, body["status"], body["message"]


def test_unknown_and_disabled_subscriptions_are_refused(cstg: Cstg) -> None:
    request = page_request(cstg.public_key, "NoSuchSub1", {"email_hash": b64_sha256("a@b.com")})
    assert _error(cstg.post(request)) == (400, "client_error", "bad subscription_id")
    pair = admin.add_keypair(cstg.store, SITE, 0, admin.default_rng)
    _synced(cstg.live)
    mine = page_request(
        pair["public_key"], pair["subscription_id"], {"email_hash": b64_sha256("a@b.com")}
    )
    assert cstg.post(mine).status == 200
    admin.set_keypair_disabled(cstg.store, pair["subscription_id"], True)
    _synced(cstg.live)
    again = page_request(
        pair["public_key"], pair["subscription_id"], {"email_hash": b64_sha256("a@b.com")}
    )
    # As the official operator answers a disabled subscription: 401 unauthorized.
    assert _error(cstg.post(again))[:2] == (401, "unauthorized")


def test_a_request_for_another_keypair_does_not_open(cstg: Cstg) -> None:
    other = admin.add_keypair(cstg.store, SITE, 0, admin.default_rng)
    _synced(cstg.live)
    # Encrypted to the other subscription's key, sent under this one.
    request = page_request(
        other["public_key"], cstg.subscription_id, {"email_hash": b64_sha256("a@b.com")}
    )
    assert _error(cstg.post(request)) == (400, "client_error", "payload decryption failed")


@pytest.mark.parametrize("age_s", [61, -61, 3600 * 24 * 365])
def test_a_request_a_minute_or_more_from_the_operators_clock_is_refused(
    cstg: Cstg, age_s: int
) -> None:
    # As the official operator: a request captured on its way cannot be replayed for good.
    sent = time.time_ns() // 1_000_000 - age_s * 1000
    request = cstg.page({"email_hash": b64_sha256("old@example.com")}, timestamp_ms=sent)
    assert _error(cstg.post(request)) == (
        400,
        "error",
        "invalid timestamp: request too old or client time drift",
    )


def test_a_request_within_the_minute_is_answered_and_may_be_sent_again(cstg: Cstg) -> None:
    # Clocks drift: 50 s either way is answered (the official operator's bound is one minute),
    # and within it a page may send the same request again (a retry), as to the official one.
    for age_s in (50, -50):
        sent = time.time_ns() // 1_000_000 - age_s * 1000
        request = cstg.page({"email_hash": b64_sha256("drift@example.com")}, timestamp_ms=sent)
        for _ in range(2):
            assert request.open_answer(cstg.post(request).body)["status"] == "success"


def _tampered(cstg: Cstg, change: str) -> dict[str, Any] | bytes:
    body = cstg.page({"email_hash": b64_sha256("t@example.com")}).body
    if change == "timestamp":
        body["timestamp"] += 1  # the AAD no longer matches
    elif change == "iv":
        body["iv"] = base64.b64encode(b"\0" * 8).decode()
    elif change == "iv_b64":
        body["iv"] = "not base64!"
    elif change == "public_key":
        body["public_key"] = base64.b64encode(b"not a key").decode()
    elif change == "payload":
        raw = bytearray(base64.b64decode(body["payload"]))
        raw[0] ^= 1
        body["payload"] = base64.b64encode(bytes(raw)).decode()
    elif change == "no_payload":
        del body["payload"]
    elif change == "timestamp_type":
        body["timestamp"] = "soon"
    elif change == "timestamp_range":
        body["timestamp"] = 2**63
    elif change == "not_json":
        return b"{not json"
    elif change == "json_list":
        return b"[]"
    elif change == "json_deep":  # deeper than Python's recursion limit: not a 500
        return b'{"subscription_id": ' + b"[" * 5000
    return body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("timestamp", "payload decryption failed"),
        ("iv", "bad iv"),
        ("iv_b64", "bad iv"),
        ("public_key", "bad public key"),
        ("payload", "payload decryption failed"),
        ("no_payload", "required parameters: payload, iv, public_key"),
        ("timestamp_type", "timestamp must be milliseconds since the epoch"),
        ("timestamp_range", "timestamp must be milliseconds since the epoch"),
        ("not_json", "json payload is not valid"),
        ("json_list", "json payload is not valid"),
        ("json_deep", "json payload is not valid"),
    ],
)
def test_malformed_and_tampered_requests_are_client_errors(
    cstg: Cstg, change: str, message: str
) -> None:
    assert _error(cstg.post(_tampered(cstg, change))) == (400, "client_error", message)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "encrypted payload contains invalid json"),
        # Anyone can seal a payload (the key is public): a deep one is refused, not a 500.
        (b"[" * 2500, "encrypted payload contains invalid json"),
        ({"email": "raw@example.com"}, "please provide exactly one of: email_hash, phone_hash"),
        (
            {"email_hash": b64_sha256("a@b.com"), "phone_hash": b64_sha256("+14155550100")},
            "please provide exactly one of: email_hash, phone_hash",
        ),
        ({"email_hash": 12}, "email_hash must be a string"),
    ],
)
def test_bad_decrypted_payloads_are_client_errors(
    cstg: Cstg, payload: dict[str, Any] | bytes, message: str
) -> None:
    assert _error(cstg.post(cstg.page(payload))) == (400, "client_error", message)


def test_an_invalid_hash_is_a_client_error(cstg: Cstg) -> None:
    status, kind, _ = _error(cstg.post(cstg.page({"email_hash": "c2hvcnQ="})))
    assert (status, kind) == (400, "client_error")


def test_browsers_may_call_it_cross_origin(cstg: Cstg) -> None:
    reply = cstg.live.raw(
        PATH,
        method="OPTIONS",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert reply.status == 204
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "POST" in reply.headers["access-control-allow-methods"]
    ok = cstg.post(cstg.page({"email_hash": b64_sha256("cors@example.com")}))
    assert ok.headers["access-control-allow-origin"] == "*"


def test_random_json_bodies_are_answered_400_or_403_never_500(cstg: Cstg) -> None:
    rnd = random.Random(11)
    valid = cstg.page({"email_hash": b64_sha256("fuzz@example.com")}).body
    junk: list[Any] = [None, 0, -1, 2**70, 1.5, True, "", "x", "A" * 5000, [], {}, ["a"]]
    for _ in range(300):
        body = {
            name: rnd.choice([value, *junk]) for name, value in valid.items() if rnd.random() < 0.9
        }
        if rnd.random() < 0.2:
            body["app_name"] = rnd.choice(junk)
        reply = cstg.post(body, origin=rnd.choice([ORIGIN, None, "", "::", "https://[::1"]))
        assert reply.status in (200, 400, 403), (body, reply.body)
        if reply.status != 200:
            assert reply.json()["status"] in {
                "client_error",
                "invalid_http_origin",
                "invalid_app_name",
            }
