"""The whole stack with TLS on every port and every connection between the services (each
`serve` with --tls-cert/--tls-key from the environment and --peer-ca), and mutual TLS on the
publishers, the SSP and the DSP (--client-ca; every caller presents --peer-cert/--peer-key):
the workflow still runs end to end, a plaintext client is refused, a caller without a
certificate those services trust is refused, and a service that does not trust the CA cannot
reach its peer."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from uid2_client import TokenGenerateInput, Uid2PublisherClient

from demo.processes import ServiceProcess, wait_until
from demo.stack import PUBLISHER_DOMAIN, Stack, StackTls, bearer
from svc_common.errors import CONNECTION_CLOSED, TLS_HANDSHAKE_FAILED
from tests.support.node_client import check_operator
from tests.support.tls_certs import TlsFiles, make_tls_files
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc
from uid2.publisher.v1 import publisher_pb2, publisher_pb2_grpc
from uid2.ssp.v1 import openrtb_pb2, openrtb_pb2_grpc, ssp_pb2

pytestmark = pytest.mark.slow

CONSENT = operator_pb2.PrivacySettings(transparency_notice_accepted=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, files: TlsFiles) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("tls-stack"),
        tls=StackTls(files.ca, files.cert, files.key, client_certs=True),
    )
    try:
        s.provision()
        s.start_all()
        yield s
    finally:
        assert all(code == 0 for code in s.stop_all().values())


def test_the_workflow_runs_over_tls_with_decrypting_ssp_and_bidder(stack: Stack) -> None:
    pub = stack.publisher()
    login = pub.Login(
        publisher_pb2.LoginRequest(
            user_id="tina", email="tina@example.com", privacy_settings=CONSENT
        )
    )
    assert login.status == publisher_pb2.LOGIN_STATUS_SUCCESS
    ad = pub.ServeAd(
        publisher_pb2.ServeAdRequest(
            user_id="tina", placement_id="top", page_domain=PUBLISHER_DOMAIN, floor_price=0.1
        )
    )
    assert ad.token_sent
    # VALID: the SSP fetched keys and opt-outs from the operator over TLS and decrypted.
    assert ad.token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID
    assert ad.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
    # The bidder's bonus for a decrypted UID2 (base 1.0 + 1.5): it reached the operator too.
    assert ad.winning_bid.price == pytest.approx(2.5)


def test_every_service_says_it_serves_tls(stack: Stack) -> None:
    for name, proc in stack.procs.items():
        serving = next(e for e in proc.events if e.get("event") == "serving")
        assert serving["tls"] is True, name
        # The operator calls no peer, and its callers authenticate with API keys.
        assert serving["client_certs"] is (name != "operator"), name
        assert serving.get("peer_tls", True) is True, name
        assert serving.get("peer_cert", True) is True, name


def _login(address: str, credentials: grpc.ChannelCredentials) -> publisher_pb2.LoginResponse:
    request = publisher_pb2.LoginRequest(
        user_id="mallory", email="mallory@example.com", privacy_settings=CONSENT
    )
    with grpc.secure_channel(address, credentials) as channel:
        stub = publisher_pb2_grpc.PublisherServiceStub(channel)
        response: publisher_pb2.LoginResponse = stub.Login(request, timeout=10)
    return response


def _bid(address: str, credentials: grpc.ChannelCredentials) -> openrtb_pb2.BidResponse:
    with grpc.secure_channel(address, credentials) as channel:
        stub = openrtb_pb2_grpc.BidderServiceStub(channel)
        response: openrtb_pb2.BidResponse = stub.Bid(openrtb_pb2.BidRequest(id="probe"), timeout=10)
    return response


def test_a_caller_without_a_trusted_certificate_is_refused_by_the_publisher_and_the_dsp(
    stack: Stack, files: TlsFiles, tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path / "other")  # a certificate another CA signed
    no_cert = grpc.ssl_channel_credentials(files.ca.read_bytes())
    foreign_cert = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), other.key.read_bytes(), other.cert.read_bytes()
    )
    for credentials in (no_cert, foreign_cert):
        for call, name in ((_login, "publisher"), (_bid, "dsp")):
            with pytest.raises(grpc.RpcError) as exc:
                call(stack.procs[name].address, credentials)
            # Refused in the handshake: no handler ran, so there is nothing else to say.
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, name
    # The same calls with the stack's own certificate get through.
    assert _login(stack.procs["publisher"].address, stack.tls_credentials()).status == (
        publisher_pb2.LOGIN_STATUS_SUCCESS
    )
    assert _bid(stack.procs["dsp"].address, stack.tls_credentials()).id == "probe"


def test_the_node_client_reaches_the_operator_over_tls(stack: Stack, files: TlsFiles) -> None:
    report = check_operator(
        stack.procs["operator"].address, stack.creds.publisher["api_key"], ca=files.ca
    )
    assert report["ok"] and "refresh" in report["checks"] and "unauthenticated" in report["checks"]


def test_a_plaintext_client_is_refused(stack: Stack) -> None:
    with grpc.insecure_channel(stack.procs["operator"].address) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.GenerateToken(
                operator_pb2.GenerateTokenRequest(
                    dii=operator_pb2.Dii(email="plain@example.com"), privacy_settings=CONSENT
                ),
                metadata=bearer(stack.creds.publisher["api_key"]),
                timeout=5,
            )
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    host, port = stack.procs["operator"].address.rsplit(":", 1)
    for _ in range(3):  # a port scan or a TCP health check: not a line each
        with socket.create_connection((host, int(port)), timeout=5) as scan:
            scan.sendall(b"GET / HTTP/1.1\r\n\r\n")
            with contextlib.suppress(OSError):
                scan.recv(10)
    time.sleep(0.5)
    # grpc's default verbosity wrote a line per failed handshake, not JSON (run_console).
    assert not [x for x in stack.procs["operator"].lines if not x.startswith("{")]


@pytest.mark.parametrize(
    ("peer_tls", "why", "said"),
    [
        ("other-ca", TLS_HANDSHAKE_FAILED, "the TLS handshake failed"),
        # Left by the misconfiguration review: this read as an operator that is down.
        ("none", CONNECTION_CLOSED, "check --peer-ca"),
    ],
)
def test_a_publisher_that_does_not_trust_the_ca_cannot_log_users_in(
    stack: Stack, tmp_path: Path, peer_tls: str, why: str, said: str
) -> None:
    # Another CA (not the one that signed the peers), or no TLS at all.
    other = make_tls_files(tmp_path / "other")
    peer_flags = ["--peer-ca", str(other.ca)] if peer_tls == "other-ca" else []
    env = {
        "UID2_PUBLISHER_OPERATOR_API_KEY": stack.creds.publisher["api_key"],
        "UID2_PUBLISHER_SSP_API_KEY": stack.creds.ssp_publisher_key,
    }
    proc = ServiceProcess(
        ["uid2-publisher", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "p"),
         "--operator-address", stack.procs["operator"].address, "--site-id", "101",
         "--ssp-address", stack.procs["ssp"].address, *peer_flags],
        env=env,
    ).wait_ready(30)  # fmt: skip
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = publisher_pb2_grpc.PublisherServiceStub(channel)
            with pytest.raises(grpc.RpcError) as exc:
                stub.Login(
                    publisher_pb2.LoginRequest(
                        user_id="u", email="untrusted@example.com", privacy_settings=CONSENT
                    ),
                    timeout=20,
                )
        # The operator cannot be reached, and why: to the caller and on the call's line.
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert said in (exc.value.details() or "")
        assert wait_until(lambda: any(e.get("method") for e in proc.events))
        call = next(e for e in proc.events if e.get("method", "").endswith("/Login"))
        assert call["peer_failure"] == why
    finally:
        assert proc.terminate() == 0


def test_the_http_api_serves_https_to_the_official_sdk(
    files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.operator.conftest import add_client, init_dir

    init_dir(tmp_path)
    client = add_client(tmp_path, 100, "pub", ["GENERATOR"])
    proc = ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0", "--tls-cert", str(files.cert),
         "--tls-key", str(files.key)]
    ).wait_ready(30)  # fmt: skip
    try:
        http_port = next(e for e in proc.events if e.get("event") == "serving")["http_port"]
        # The SDK verifies with Python's default trust store, which this variable points at.
        monkeypatch.setitem(os.environ, "SSL_CERT_FILE", str(files.ca))
        sdk = Uid2PublisherClient(f"https://127.0.0.1:{http_port}", client.api_key, client.secret)
        generated = sdk.generate_token(TokenGenerateInput.from_email("https@example.com"))
        assert generated.is_success()
        assert sdk.refresh_token(generated.get_identity()).is_success()
    finally:
        assert proc.terminate() == 0


def test_a_running_operator_serves_renewed_certificates_on_both_ports(
    files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal (new CA, certificate and key renamed over the old files) is in use for new
    connections within about a second, on the gRPC port and the HTTP API alike, with no
    restart."""
    from tests.integration.operator.conftest import add_client, init_dir

    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server.key"
    shutil.copy(files.cert, cert)
    shutil.copy(files.key, key)
    init_dir(tmp_path / "op")
    client = add_client(tmp_path / "op", 100, "pub", ["GENERATOR"])
    proc = ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(tmp_path / "op"),
         "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--tls-cert", str(cert), "--tls-key", str(key),
         "--metrics-listen", "127.0.0.1:0", "--metrics-tls"]
    ).wait_ready(30)  # fmt: skip
    try:
        serving = next(e for e in proc.events if e.get("event") == "serving")
        http_port, metrics_port = serving["http_port"], serving["metrics_port"]
        new = make_tls_files(tmp_path / "renewed")
        for source, target in ((new.key, key), (new.cert, cert)):
            shutil.copy(source, target.with_suffix(".tmp"))
            os.replace(target.with_suffix(".tmp"), target)

        def grpc_trusts(ca: Path) -> bool:
            credentials = grpc.ssl_channel_credentials(ca.read_bytes())
            options = [("grpc.use_local_subchannel_pool", 1)]  # a new handshake each time
            with grpc.secure_channel(proc.address, credentials, options=options) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=2)
                except grpc.FutureTimeoutError:
                    return False
            return True

        assert wait_until(lambda: grpc_trusts(new.ca), 5.0)
        assert not grpc_trusts(files.ca)
        monkeypatch.setitem(os.environ, "SSL_CERT_FILE", str(new.ca))
        sdk = Uid2PublisherClient(f"https://127.0.0.1:{http_port}", client.api_key, client.secret)
        assert sdk.generate_token(TokenGenerateInput.from_email("renewed@example.com")).is_success()
        # /metrics too, with --metrics-tls: over the service's TLS, renewals followed.
        metrics_url = f"https://127.0.0.1:{metrics_port}/metrics"
        context = ssl.create_default_context(cafile=new.ca)
        with urllib.request.urlopen(metrics_url, timeout=5, context=context) as reply:
            assert b"uid2_operator_optouts" in reply.read()
        assert any(e.get("event") == "tls_reloaded" for e in proc.events)
    finally:
        assert proc.terminate() == 0
