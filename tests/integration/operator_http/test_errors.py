"""What a caller gets wrong gets the official status, a plain JSON message that says what to fix,
and never a 500."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import http.client
import json
import os
import random
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from structlog.testing import capture_logs

from operator_svc.http import app as http_app
from tests.integration.operator.conftest import add_client
from tests.integration.operator_http.conftest import HttpLive, Reply
from tests.support.procs import wait_until
from uid2_crypto.envelope import encrypt_request

PATHS = [
    "/v2/token/generate",
    "/v2/token/validate",
    "/v2/token/logout",
    "/v2/identity/map",
    "/v3/identity/map",
    "/v2/identity/buckets",
    "/v2/optout/status",
    "/v2/key/sharing",
    "/v2/key/bidstream",
]


def _error(reply: Reply, http_status: int, status: str) -> str:
    assert reply.status == http_status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def _post(live: HttpLive, path: str, body: bytes, name: str = "all", **headers: str) -> Reply:
    return live.raw(path, body, headers={**live.auth(name), **headers})


def _now() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize("path", PATHS)
def test_missing_or_unknown_api_key_is_401(live: HttpLive, path: str) -> None:
    body = base64.b64encode(live.envelope("all", {}))
    _error(live.raw(path, body), 401, "unauthorized")
    _error(
        live.raw(path, body, headers={"Authorization": "Bearer UID2-C-nope-x"}), 401, "unauthorized"
    )
    _error(live.raw(path, body, headers={"Authorization": "Basic abc"}), 401, "unauthorized")


@pytest.mark.parametrize("valid_first", [True, False])
def test_two_authorization_headers_are_refused_whichever_comes_first(
    live: HttpLive, valid_first: bool
) -> None:
    # Which one a proxy keeps first is nobody's to guess; neither may pass.
    good, bad = live.auth("all")["Authorization"], "Bearer UID2-C-nope-x"
    body = base64.b64encode(live.envelope("all", {}))
    conn = http.client.HTTPConnection("127.0.0.1", live.http_port, timeout=10)
    try:
        conn.putrequest("POST", "/v2/key/sharing")
        for value in (good, bad) if valid_first else (bad, good):
            conn.putheader("Authorization", value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        reply = Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()
    assert "one authorization header" in _error(reply, 401, "unauthorized")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v2/identity/map", {"email": ["a@b.com"]}),
        ("/v3/identity/map", {"email": ["a@b.com"]}),
        ("/v2/key/bidstream", {}),
        ("/v2/key/sharing", {}),
        ("/v2/token/logout", {"email": "a@b.com"}),
        ("/v2/optout/status", {"advertising_ids": []}),
    ],
)
def test_key_without_the_role_is_401(live: HttpLive, path: str, payload: object) -> None:
    status, answer = live.call("gen", path, payload)
    assert status == 401 and answer["status"] == "unauthorized"
    assert "role" in answer["message"]


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        (["MAPPER"], True),
        (["SHARER"], True),
        (["OPTOUT"], True),
        (["ID_READER"], True),
        (["GENERATOR"], False),
    ],
)
def test_optout_status_roles_over_http(live: HttpLive, roles: list[str], allowed: bool) -> None:
    """The official operator's roles for /v2/optout/status, SHARER included."""
    assert live.served.operator is not None
    name = "status-" + roles[0].lower()
    if name not in live.clients:
        live.clients[name] = add_client(live.served.operator.config.data_dir, 102, name, roles)
        live.served.operator.sync_now()
    status, answer = live.call(name, "/v2/optout/status", {"advertising_ids": []})
    if allowed:
        assert (status, answer) == (200, {"status": "success", "body": {"opted_out": []}})
    else:
        assert status == 401 and answer["status"] == "unauthorized"
        assert "role" in answer["message"]


def test_wrong_secret(live: HttpLive) -> None:
    body = base64.b64encode(live.envelope("all", {"email": "a@b.com"}, secret=os.urandom(32)))
    msg = _error(_post(live, "/v2/token/generate", body), 400, "client_error")
    assert "client secret" in msg


def test_another_clients_secret(live: HttpLive) -> None:
    secret = base64.b64decode(live.clients["gen"].secret)
    body = base64.b64encode(live.envelope("all", {"email": "a@b.com"}, secret=secret))
    _error(_post(live, "/v2/token/generate", body), 400, "client_error")


@pytest.mark.parametrize("at", [0, 1, 12, 20, 40, -1])
def test_tampered_envelope(live: HttpLive, at: int) -> None:
    raw = bytearray(live.envelope("all", {"email": "a@b.com"}))
    raw[at] ^= 0x80
    _error(_post(live, "/v2/token/generate", base64.b64encode(raw)), 400, "client_error")
    _error(
        _post(
            live, "/v2/token/generate", bytes(raw), **{"Content-Type": "application/octet-stream"}
        ),
        400,
        "client_error",
    )


@pytest.mark.parametrize("offset_s", [-90, 90, -119])
def test_a_timestamp_less_than_two_minutes_off_is_taken(live: HttpLive, offset_s: int) -> None:
    # As the official operator: it refuses two whole minutes or more, so a caller whose clock
    # drifts 1-2 minutes works with it (a 61 s skew was refused here).
    body = base64.b64encode(
        live.envelope("all", {"email": "a@b.com"}, ts_ms=_now() + offset_s * 1000)
    )
    assert _post(live, "/v2/token/generate", body).status == 200


@pytest.mark.parametrize("offset_s", [-300, -121, 121, 3600])
def test_stale_or_future_timestamp(live: HttpLive, offset_s: int) -> None:
    body = base64.b64encode(
        live.envelope("all", {"email": "a@b.com"}, ts_ms=_now() + offset_s * 1000)
    )
    msg = _error(_post(live, "/v2/token/generate", body), 400, "client_error")
    assert "timestamp" in msg and "clock" in msg


def test_wrong_version_byte(live: HttpLive) -> None:
    raw = bytearray(live.envelope("all", {"email": "a@b.com"}))
    raw[0] = 2
    msg = _error(_post(live, "/v2/token/generate", base64.b64encode(raw)), 400, "client_error")
    assert "version 1" in msg


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (b"%%% not base64 %%%", "base64"),
        (b"", "empty"),
        (base64.b64encode(b"\x01short"), "too short"),
        (b"\x00\xff" * 50, "base64"),
    ],
)
def test_garbage_bodies(live: HttpLive, body: bytes, hint: str) -> None:
    msg = _error(_post(live, "/v2/token/generate", body), 400, "client_error")
    assert hint in msg


@pytest.mark.parametrize(
    ("payload", "hint"),
    [
        (b"not json", "JSON"),
        (b"[1]", "object"),
        (b"[" * 50_000, "JSON"),
        (b'{"email": "\\udc00"}', "surrogate"),
        ({}, "exactly one"),
        ({"email": "a@b.com", "phone": "+14155550100"}, "exactly one"),
        ({"email": 5}, "string"),
        ({"email": "not an email"}, "email"),
        ({"phone": "555-555-5555"}, "phone"),
        ({"email_hash": "abc"}, "hash"),
        ({"email": "a@b.com", "tcf_consent_string": 7}, "tcf_consent_string"),
        ({"email": "a@b.com", "tcf_consent_string": "!!!"}, "TCF"),
    ],
)
def test_bad_generate_requests(live: HttpLive, payload: object, hint: str) -> None:
    status, answer = live.call("all", "/v2/token/generate", payload)
    assert (status, answer["status"]) == (400, "client_error")
    assert hint in answer["message"]


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v2/identity/map", {}),
        ("/v2/identity/map", {"email": "a@b.com"}),
        ("/v2/identity/map", {"email": [1, 2]}),
        ("/v3/identity/map", {"phone_hash": None}),
        ("/v2/optout/status", {}),
        ("/v2/identity/buckets", {}),
        ("/v2/identity/buckets", {"since_timestamp": "yesterday"}),
        ("/v2/identity/buckets", {"since_timestamp": 5}),
        ("/v2/token/validate", {"token": "", "email": "a@b.com"}),
        ("/v2/token/validate", {"token": 5, "email": "a@b.com"}),
        ("/v2/token/logout", {"email": "nope"}),
    ],
)
def test_bad_requests_elsewhere(live: HttpLive, path: str, payload: object) -> None:
    status, answer = live.call("all", path, payload)
    assert (status, answer["status"]) == (400, "client_error"), answer


def test_body_over_two_mebibytes_is_413(live: HttpLive) -> None:
    body = base64.b64encode(os.urandom(1_600_000))
    msg = _error(_post(live, "/v2/identity/map", body), 413, "client_error")
    assert "2097152" in msg


def test_5000_long_emails_fit_in_one_identity_map_call(live: HttpLive) -> None:
    # 160-character addresses: the body the SDK sends is over 1 MiB (it was refused at 1 MiB).
    emails = [f"{i:05d}{'x' * 142}@example.com" for i in range(5000)]
    body = base64.b64encode(live.envelope("all", {"email": emails}, nonce=os.urandom(8)))
    assert len(body) > 1024 * 1024
    status, answer = live.call("all", "/v2/identity/map", {"email": emails})
    assert status == 200, answer
    assert len(answer["body"]["mapped"]) == 5000


def test_more_than_5000_identity_map_items(live: HttpLive) -> None:
    hashes = [
        base64.b64encode(hashlib.sha256(str(i).encode()).digest()).decode() for i in range(5001)
    ]
    for path in ("/v2/identity/map", "/v3/identity/map"):
        status, answer = live.call("all", path, {"email_hash": hashes})
        assert (status, answer["status"]) == (400, "client_error")
        assert "5000" in answer["message"]
    status, answer = live.call("all", "/v3/identity/map", {"email_hash": hashes[:5000]})
    assert status == 200 and len(answer["body"]["email_hash"]) == 5000


def test_unknown_path_and_method(live: HttpLive) -> None:
    _error(live.raw("/v2/nope", b"x"), 404, "client_error")
    _error(live.raw("/v1/token/generate", b"x"), 404, "client_error")
    _error(live.raw("/v2/token/generate", method="GET"), 405, "client_error")


@pytest.mark.parametrize(
    "body", [b"", b"garbage", b"\xff\xfe\x00", b"A" * 388, b"A" * 5000, b"\x00" * 388]
)
def test_refresh_garbage_is_invalid_token(live: HttpLive, body: bytes) -> None:
    msg = _error(live.raw("/v2/token/refresh", body), 400, "invalid_token")
    assert "refresh token" in msg


def test_random_bodies_never_500(live: HttpLive) -> None:
    rnd = random.Random(7)
    secret = base64.b64decode(live.clients["all"].secret)
    for i in range(150):
        path = rnd.choice([*PATHS, "/v2/token/refresh", "/v2/token/client-generate"])
        kind = i % 3
        if kind == 0:
            body = rnd.randbytes(rnd.randrange(0, 600))
        elif kind == 1:
            body = base64.b64encode(rnd.randbytes(rnd.randrange(0, 600)))
        else:
            junk = json.dumps(rnd.choice([None, 1, "x", [], {"email": []}, {"email_hash": [None]}]))
            body = base64.b64encode(
                encrypt_request(
                    secret, junk.encode(), now_ms=_now(), nonce=b"n" * 8, iv=os.urandom(12)
                )
            )
        headers = {"Content-Type": "application/octet-stream"} if rnd.random() < 0.3 else {}
        reply = _post(live, path, body, **headers)
        assert reply.status < 500, (path, reply.body)
        if reply.status != 200:
            assert reply.json()["status"] in {"client_error", "unauthorized", "invalid_token"}


def test_a_body_cut_off_mid_upload_is_the_callers_fault_not_a_500(live: HttpLive) -> None:
    # Content-Length promises more than arrives before the caller hangs up. Nobody is left to
    # read an answer, so what matters is the log: a client error, not an "unhandled" bug.
    key = live.clients["all"].api_key
    head = (
        "POST /v2/token/generate HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    with capture_logs() as logs:
        with socket.create_connection(("127.0.0.1", live.http_port), timeout=5) as conn:
            conn.sendall(head + b"A" * 10)
            time.sleep(0.1)  # the handler is reading the body when the connection goes
        assert wait_until(lambda: any(e.get("event") == "http" for e in logs), 5.0)
    events = [e for e in logs if e.get("event") in ("http", "unhandled_exception")]
    assert [(e["event"], e.get("http_status"), e.get("reason")) for e in events] == [
        ("http", 400, "INCOMPLETE_BODY")
    ]


@pytest.mark.parametrize("path", ["/v2/token/generate", "/v2/token/refresh"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_its_content_encoding_does_not_decode_is_400(
    live: HttpLive, path: str, encoding: str
) -> None:
    """It was a 500 and an unhandled_exception line, on the routes that need no key too: anyone
    could set off the 500 alerts."""
    body = base64.b64encode(live.envelope("all", {"email": "a@b.com"}))
    with capture_logs() as logs:
        reply = _post(live, path, body, **{"Content-Encoding": encoding})
    assert "does not decode" in _error(reply, 400, "client_error")
    assert [e for e in logs if e.get("event") == "unhandled_exception"] == []
    # Encoded as it says, the same body is fine.
    if path == "/v2/token/generate":
        packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        assert _post(live, path, packed, **{"Content-Encoding": encoding}).status == 200


def test_a_request_holds_the_body_budget_until_its_answer_is_taken(
    live: HttpLive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An identity map's answer its client does not read: counted only while its body was read,
    200 of them took the operator past 1 GB. Held until the answer is sent: here a send that
    waits for the test (loopback's kernel buffers would take a real answer at once)."""
    emails = ["x" * 60 + f"{i:06d}@" + "d" * 180 + ".com" for i in range(5000)]

    def body() -> bytes:
        return base64.b64encode(live.envelope("all", {"email": emails}))

    monkeypatch.setattr(
        http_app, "BODY_BUDGET_BYTES", len(body()) * http_app.HELD_PER_BODY_BYTE + 16
    )
    gate = threading.Event()
    real_send = http_app.HttpApi._send

    async def slow_send(self: Any, request: Any, response: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        await real_send(self, request, response)

    monkeypatch.setattr(http_app.HttpApi, "_send", slow_send)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, live, "/v2/identity/map", body())
        time.sleep(1.0)  # answered by now, its answer being sent
        busy = _post(live, "/v2/identity/map", body())
        assert "too many large requests" in _error(busy, 503, "error")
        # A small call is never refused for the budget: a MAPPER's maps must not starve it.
        assert live.call("gen", "/v2/token/generate", {"email": "a@b.com"})[0] == 200
        gate.set()
        assert first.result(timeout=20).status == 200
    assert _post(live, "/v2/identity/map", body()).status == 200  # the budget was given back


def test_a_compressed_body_is_held_to_its_routes_limit_once_decoded(live: HttpLive) -> None:
    """Its Content-Length is the compressed size: 2 KB of gzip that decodes to 2 MiB passed
    the 64 KiB limit of the routes that need no key, and the budget counted 2 KB for it."""
    bomb = gzip.compress(b"A" * (2 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    reply = live.raw("/v2/token/refresh", bomb, headers={"Content-Encoding": "gzip"})
    assert "larger than 65536 bytes" in _error(reply, 413, "client_error")


def test_a_body_that_does_not_decode_logs_no_error_of_aiohttps(
    live: HttpLive, caplog: pytest.LogCaptureFixture
) -> None:
    """Answered 400, the connection was then drained for the next request, and draining a body
    that does not decode made aiohttp log an error (a library_log line, error level): anyone
    could write error lines without a key. The connection is closed instead."""
    with caplog.at_level("ERROR", logger="aiohttp"):
        reply = live.raw(
            "/v2/token/refresh", b"not gzip at all", headers={"Content-Encoding": "gzip"}
        )
        assert reply.status == 400
        time.sleep(0.2)
    assert [r for r in caplog.records if r.name.startswith("aiohttp")] == []


def test_content_encoding_named_twice_is_judged_by_every_header(live: HttpLive) -> None:
    """aiohttp inflates by the last Content-Encoding; a first `identity` made the 64 KiB limit
    go by the compressed length: 400 such bodies held 1.5 GB, no key needed."""
    bomb = gzip.compress(b"A" * (2 * 1024 * 1024))
    head = (
        "POST /v2/token/refresh HTTP/1.1\r\nHost: x\r\nContent-Encoding: identity\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live.http_port), timeout=10) as conn:
        conn.sendall(head + bomb)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n")[0] == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_large_answer_closes_its_connection(live: HttpLive) -> None:
    """aiohttp keeps a kept-alive connection's last request and answer until its next request:
    200 idle connections each held an identity map's 4 MB for 20 s, outside the budget."""
    emails = [f"user{i}@example.com" for i in range(5000)]
    reply = _post(
        live, "/v2/identity/map", base64.b64encode(live.envelope("all", {"email": emails}))
    )
    assert reply.status == 200 and len(reply.body) > http_app.SENT_IN_EDGE_BYTES
    assert reply.headers.get("connection", "").lower() == "close"
    small = _post(
        live, "/v2/token/generate", base64.b64encode(live.envelope("all", {"email": "a@b.com"}))
    )
    assert small.status == 200 and small.headers.get("connection", "").lower() != "close"
    # A large request with a small answer too: the request is what the connection kept.
    raws = [base64.b64encode(bytes([i % 256, i // 256]) * 16).decode() for i in range(3000)]
    body = base64.b64encode(live.envelope("all", {"advertising_ids": raws}))
    assert len(body) > http_app.SMALL_HOLD_BYTES  # (mutation review: untested)
    status = _post(live, "/v2/optout/status", body)
    assert status.status == 200 and len(status.body) < http_app.SENT_IN_EDGE_BYTES
    assert status.headers.get("connection", "").lower() == "close"


def test_an_undecodable_body_refused_before_it_is_read_logs_no_error_of_aiohttps(
    live: HttpLive, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR", logger="aiohttp"):
        reply = live.raw(
            "/v2/token/generate", b"not gzip at all", headers={"Content-Encoding": "gzip"}
        )
        assert reply.status == 401  # no key: refused before the body is read
        time.sleep(0.2)
    assert [r for r in caplog.records if r.name.startswith("aiohttp")] == []
