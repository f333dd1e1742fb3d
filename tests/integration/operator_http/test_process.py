"""`uid2-operator serve --http-listen` as a real process: both front doors in one process, the
`serving` event carries `http_port`, SIGTERM drains both and exits 0, and the log holds one line
per HTTP request with no key, secret, DII or token in it."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from uid2_client import TokenGenerateInput, Uid2PublisherClient

from demo.page import b64_sha256, page_request, post_page_request
from operator_svc import admin
from operator_svc.store import OperatorStore
from tests.integration.operator.conftest import add_client, init_dir
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("via_env", [False, True])
def test_serve_with_http_listen(tmp_path: Path, via_env: bool) -> None:
    init_dir(tmp_path)
    client = add_client(tmp_path, 100, "pub", ["GENERATOR"])
    store = OperatorStore.open(tmp_path)
    try:
        admin.add_site(store, 100, "pub", ["pub.example"], [], 0, admin.default_rng)
        pair = admin.add_keypair(store, 100, 0, admin.default_rng)
    finally:
        store.close()
    args = ["uid2-operator", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]
    env = {"UID2_OPERATOR_HTTP_LISTEN": "127.0.0.1:0"} if via_env else None
    if not via_env:
        args += ["--http-listen", "127.0.0.1:0"]
    proc = ServiceProcess(args, env=env).wait_ready(30)
    try:
        serving = next(e for e in proc.events if e.get("event") == "serving")
        http_port = serving["http_port"]
        assert http_port and http_port != serving["port"]
        base = f"http://127.0.0.1:{http_port}"
        with urllib.request.urlopen(base + "/ops/healthcheck", timeout=5) as resp:  # noqa: S310  # a fixed http://127.0.0.1 URL
            assert resp.read() == b"OK"
        email = "process-user@example.com"
        sdk = Uid2PublisherClient(base, client.api_key, client.secret)
        generated = sdk.generate_token(TokenGenerateInput.from_email(email))
        assert generated.is_success()
        identity = generated.get_identity()
        assert sdk.refresh_token(identity).is_success()
        email_hash = b64_sha256("page-user@example.com")
        page = page_request(pair["public_key"], pair["subscription_id"], {"email_hash": email_hash})
        status, answer = post_page_request(base, page, "https://pub.example")
        assert status == 200, answer
        page_identity = answer["body"]
        assert post_page_request(base, page, "https://elsewhere.example")[0] == 403
        # Requests aiohttp's parser refuses: it logs them quoting the offending line.
        for raw in (
            b"POST /v2/token/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + client.api_key.encode()
            + b"\x01\r\nContent-Length: 0\r\n\r\n",
            b"GET /v1/token/generate?email=" + email.encode() + b"&x=\x7f HTTP/1.1\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", http_port), timeout=5) as conn:
                conn.sendall(raw)
                assert conn.recv(100).split(b"\r\n")[0].endswith(b" 400 Bad Request")
        assert proc.terminate() == 0
    finally:
        proc.kill()
    log = proc.log_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    http = [e for e in lines if e.get("event") == "http"]
    assert [(e["path"], e["http_status"]) for e in http] == [
        ("/ops/healthcheck", 200),
        ("/v2/token/generate", 200),
        ("/v2/token/refresh", 200),
        ("/v2/token/client-generate", 200),
        ("/v2/token/client-generate", 403),
    ]
    assert http[-2]["site_id"] == 100 and http[-2]["status"] == "success"
    # A refused page's line names the site too (operators see who is being probed).
    assert (http[-1]["site_id"], http[-1]["reason"]) == (100, "INVALID_HTTP_ORIGIN")
    assert all("request_id" in e and "latency_ms" in e for e in http)
    for secret in (
        client.api_key,
        client.secret,
        email,
        identity.get_advertising_token(),
        identity.get_refresh_token(),
        email_hash,
        page.body["payload"],
        page_identity["advertising_token"],
        page_identity["refresh_token"],
        page_identity["refresh_response_key"],
    ):
        assert secret not in log
    assert "Traceback" not in log
    assert any(e.get("event") == "library_log" for e in lines)  # the refusals, text withheld
