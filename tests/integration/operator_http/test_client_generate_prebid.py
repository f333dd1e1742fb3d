"""Prebid.js 11.36.0's own UID2 client-side token generation (tests/support/prebid_cstg.py runs
it from Node) against our operator's POST /v2/token/client-generate: the wire-compatibility
oracle for the endpoint, as uid2-client is for the rest of the HTTP API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from uid2_client import BidstreamClient, DecryptionStatus

from demo.page import b64_sha256
from operator_svc import admin
from operator_svc.store import OperatorStore
from tests.integration.operator_http.conftest import HttpLive, start
from tests.support.prebid_cstg import prebid_cstg_generate
from uid2.operator.v1 import operator_pb2 as pb

pytestmark = pytest.mark.slow

SITE = 100
ORIGIN = "https://www.publisher.example"


@dataclass
class Page:
    live: HttpLive
    subscription_id: str
    public_key: str

    def generate(
        self,
        origin: str = ORIGIN,
        *,
        email: str | None = None,
        phone: str | None = None,
        email_hash: str | None = None,
    ) -> dict[str, Any]:
        return prebid_cstg_generate(
            self.live.base_url,
            self.public_key,
            self.subscription_id,
            origin,
            email=email,
            phone=phone,
            email_hash=email_hash,
        )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    tmp = tmp_path_factory.mktemp("prebid")
    live = start(tmp)
    store = OperatorStore.open(tmp)
    try:
        admin.add_site(store, SITE, "publisher", ["publisher.example"], [], 0, admin.default_rng)
        pair = admin.add_keypair(store, SITE, int(time.time() * 1000), admin.default_rng)
    finally:
        store.close()
    assert live.served.operator is not None
    live.served.operator.sync_now()
    yield Page(live, pair["subscription_id"], pair["public_key"])
    live.channel.close()
    live.served.stop(1.0)


def _decrypt(live: HttpLive, token: str) -> Any:
    c = live.clients["reader"]
    client = BidstreamClient(live.base_url, c.api_key, c.secret)
    assert client.refresh().success
    return client.decrypt_token_into_raw_uid(token, "publisher.example")


def _raw_uid(live: HttpLive, dii: pb.Dii) -> str:
    resp = live.stub.MapIdentity(
        pb.MapIdentityRequest(dii=[dii]), metadata=live.grpc_md("all"), timeout=10
    )
    return str(resp.results[0].raw_uid)


@pytest.mark.parametrize(
    ("identity", "dii"),
    [
        # Prebid normalises the email (gmail dots and +tags too) before hashing it.
        ({"email": "  Jane.Doe+ads@GMail.com "}, pb.Dii(email="janedoe@gmail.com")),
        ({"phone": "+14155550100"}, pb.Dii(phone="+14155550100")),
        ({"email_hash": b64_sha256("hashed@example.com")}, pb.Dii(email="hashed@example.com")),
    ],
)
def test_prebid_gets_an_identity_for_the_users_raw_uid2(
    page: Page, identity: dict[str, str], dii: pb.Dii
) -> None:
    answer = page.generate(**identity)
    assert "error" not in answer, answer
    result = _decrypt(page.live, answer["advertising_token"])
    assert result.status is DecryptionStatus.SUCCESS
    assert result.uid == _raw_uid(page.live, dii)
    assert result.site_id == SITE and result.is_client_side_generated
    assert answer["identity_expires"] > time.time() * 1000


def test_prebid_sees_an_opt_out_as_one(page: Page) -> None:
    assert page.generate(email="optout@example.com") == {"status": "optout"}


def test_prebid_is_refused_on_a_page_outside_the_site(page: Page) -> None:
    answer = page.generate(origin="https://publisher.example.evil.test", email="a@example.com")
    # Prebid 11.36.0 reads a 403 only as "invalid for HTTP status 403" (it checks the XHR, not
    # the body, for invalid_http_origin); the body is still what the official operator sends.
    assert "403" in answer["error"] and "invalid_http_origin" in answer["error"]


def test_prebid_reports_a_client_error(page: Page) -> None:
    answer = prebid_cstg_generate(
        page.live.base_url, page.public_key, "NoSuchSub0", ORIGIN, email="a@example.com"
    )
    assert "Client error: bad subscription_id" in answer["error"]
