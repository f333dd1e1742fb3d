"""The Prebid.js CSTG harness (tests/support/prebid_cstg.py) against a stub of
POST /v2/token/client-generate written here from the protocol, so the harness is known to work
before the operator's endpoint exists: Prebid's request decrypts as the protocol says, and each
kind of answer (success, opt-out, 400, 403) comes back as the harness documents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.support.prebid_cstg import prebid_cstg_generate

pytestmark = pytest.mark.slow

ORIGIN = "https://www.publisher.example"
SUBSCRIPTION_ID = "sub-4fT9xQ"
IDENTITY = {
    "advertising_token": "dummy-advertising-token",
    "refresh_token": "dummy-refresh-token",
    "identity_expires": 4_102_444_800_000,
    "refresh_expires": 4_102_444_900_000,
    "refresh_from": 4_102_444_700_000,
    "refresh_response_key": base64.b64encode(bytes(32)).decode(),
}


def b64sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@dataclass
class Seen:
    """One request as the stub received it, and what its payload decrypted to."""

    headers: dict[str, str]
    body: dict[str, Any]
    dii: dict[str, str]


@dataclass
class StubCstg:
    """A stand-in for the operator's CSTG endpoint: one key pair, one allowed origin."""

    base_url: str = ""
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    # What the next request gets: "success", "optout" or "client_error".
    answer: str = "success"
    seen: list[Seen] = field(default_factory=list)

    @property
    def public_key(self) -> str:
        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "UID2-X-L-" + base64.b64encode(spki).decode()

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Origin") != ORIGIN:
            return web.json_response(
                {"status": "invalid_http_origin", "message": "unexpected http origin"}, status=403
            )
        body = json.loads(await request.read())
        client = serialization.load_der_public_key(base64.b64decode(body["public_key"]))
        assert isinstance(client, ec.EllipticCurvePublicKey)
        # The ECDH shared secret (the x coordinate, 32 bytes) is the AES-256-GCM key as is.
        shared = AESGCM(self.key.exchange(ec.ECDH(), client))
        aad = json.dumps([body["timestamp"]]).encode()
        plain = shared.decrypt(base64.b64decode(body["iv"]), base64.b64decode(body["payload"]), aad)
        self.seen.append(Seen(dict(request.headers), body, json.loads(plain)))
        if self.answer == "client_error":
            return web.json_response(
                {"status": "client_error", "message": "payload is not valid"}, status=400
            )
        reply: dict[str, Any] = (
            {"status": "optout"}
            if self.answer == "optout"
            else {"status": "success", "body": IDENTITY}
        )
        iv = os.urandom(12)
        sealed = iv + shared.encrypt(iv, json.dumps(reply).encode(), None)
        return web.Response(text=base64.b64encode(sealed).decode(), content_type="text/plain")


@pytest.fixture
def stub() -> Iterator[StubCstg]:
    """The stub served on a free port from its own thread and event loop."""
    stub = StubCstg()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v2/token/client-generate", stub.handle)
    runner = web.AppRunner(app)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        stub.base_url = f"http://127.0.0.1:{port}"

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield stub
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def generate(stub: StubCstg, origin: str = ORIGIN, **dii: Any) -> dict[str, Any]:
    """Prebid's CSTG against the stub; dii: one of email, phone, email_hash, phone_hash."""
    return prebid_cstg_generate(stub.base_url, stub.public_key, SUBSCRIPTION_ID, origin, **dii)


def test_an_email_is_sent_hashed_and_the_identity_comes_back(stub: StubCstg) -> None:
    before = int(time.time() * 1000)
    assert generate(stub, email="user@example.com") == IDENTITY
    [seen] = stub.seen
    assert seen.dii == {"email_hash": b64sha256("user@example.com")}
    assert set(seen.body) == {"payload", "iv", "public_key", "timestamp", "subscription_id"}
    assert seen.body["subscription_id"] == SUBSCRIPTION_ID
    assert before <= seen.body["timestamp"] <= int(time.time() * 1000)
    assert len(base64.b64decode(seen.body["iv"])) == 12
    assert seen.headers["Origin"] == ORIGIN
    assert seen.headers["Content-Type"] == "text/plain"


def test_prebid_normalises_an_email_before_hashing_it(stub: StubCstg) -> None:
    assert generate(stub, email="  Jane.Doe+ads@GMail.com ") == IDENTITY
    assert stub.seen[0].dii == {"email_hash": b64sha256("janedoe@gmail.com")}


def test_a_phone_and_the_hashes_are_sent_as_hashes(stub: StubCstg) -> None:
    phone_hash = b64sha256("+15551234567")
    email_hash = b64sha256("someone@example.com")
    assert generate(stub, phone="+15551234567") == IDENTITY
    assert generate(stub, phone_hash=phone_hash) == IDENTITY
    assert generate(stub, email_hash=email_hash) == IDENTITY
    assert [s.dii for s in stub.seen] == [
        {"phone_hash": phone_hash},
        {"phone_hash": phone_hash},
        {"email_hash": email_hash},
    ]


def test_an_optout_is_reported_as_such(stub: StubCstg) -> None:
    stub.answer = "optout"
    assert generate(stub, email="user@example.com") == {"status": "optout"}


def test_a_client_error_is_an_error(stub: StubCstg) -> None:
    stub.answer = "client_error"
    answer = generate(stub, email="user@example.com")
    assert "Client error: payload is not valid" in answer["error"]


def test_a_refused_origin_is_an_error(stub: StubCstg) -> None:
    # Prebid 11.36.0 checks the 403's XHR object, not its body, for "invalid_http_origin", so it
    # never says "Forbidden: ...": it reports the body as invalid for a 403, quoting it.
    answer = generate(stub, origin="https://elsewhere.example", email="user@example.com")
    assert "403" in answer["error"]
    assert "invalid_http_origin" in answer["error"]
    assert stub.seen == []


def test_an_identity_prebid_refuses_fails_the_harness_and_sends_nothing(stub: StubCstg) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"CSTG opts\.email is invalid"):
        generate(stub, email="not an email")
    with pytest.raises(ValueError, match="exactly one"):
        prebid_cstg_generate(stub.base_url, stub.public_key, SUBSCRIPTION_ID, ORIGIN)
    assert stub.seen == []
