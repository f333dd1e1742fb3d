"""TLS settings: files are checked once, at start-up, and refused in one line (exit 2) without
quoting them; a server started with them serves TLS only, and a channel trusting the CA reaches
it."""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dsp_svc import cli as dsp_cli
from operator_svc import cli as operator_cli
from publisher_svc import cli as publisher_cli
from ssp_svc import cli as ssp_cli
from svc_common import tls
from svc_common.errors import CONNECTION_CLOSED, TLS_HANDSHAKE_FAILED, failure_fields
from svc_common.grpc_client import RemoteError, call_with_retry, to_remote_error
from svc_common.settings import SettingError
from svc_common.tls import (
    load_peer_tls,
    load_server_tls,
    requiring_client_certs,
)
from svc_common.tls_reload import open_channel
from tests.support.health_server import health_only_server
from tests.support.tls_certs import TlsFiles, make_tls_files

Main = Callable[[Sequence[str] | None], int]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_a_matching_certificate_and_key_load(files: TlsFiles) -> None:
    tls = load_server_tls(str(files.cert), str(files.key))
    assert tls.cert_chain == files.cert.read_bytes()
    assert "PRIVATE" not in repr(tls)  # the key never reaches a log line through a repr
    assert load_peer_tls(str(files.ca)).root_certificates == files.ca.read_bytes()


def test_a_key_that_is_not_the_certificates_is_refused(files: TlsFiles) -> None:
    with pytest.raises(SettingError, match="not the private key of the certificate"):
        load_server_tls(str(files.cert), str(files.other_key))


def test_an_expired_certificate_is_refused_one_not_yet_valid_is_not(tmp_path: Path) -> None:
    # Every caller would refuse an expired one; at start that is one line, not a failed
    # handshake per call. One valid from a moment ahead (a CA's clock ahead) loads.
    day = datetime.timedelta(days=1)
    expired = make_tls_files(tmp_path / "expired", valid_from=-30 * day, valid_until=-day)
    with pytest.raises(SettingError, match="the certificate expired on"):
        load_server_tls(str(expired.cert), str(expired.key))
    with pytest.raises(SettingError, match="the certificate expired on"):
        load_peer_tls(str(expired.ca), str(expired.cert), str(expired.key))
    ahead = make_tls_files(
        tmp_path / "ahead", valid_from=datetime.timedelta(minutes=2), valid_until=day
    )
    assert load_server_tls(str(ahead.cert), str(ahead.key)).cert_file == ahead.cert


def test_an_encrypted_key_is_refused(files: TlsFiles, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    with pytest.raises(SettingError, match="encrypted private key"):
        load_server_tls(str(files.cert), str(encrypted))


def _load(files: TlsFiles, which: str, path: str) -> None:
    """Loads `path` as the server's certificate or key, or as the CA file of peer TLS."""
    if which == "cert":
        load_server_tls(path, str(files.key))
    elif which == "key":
        load_server_tls(str(files.cert), path)
    else:
        load_peer_tls(path)


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_missing_and_non_pem_files_are_refused(files: TlsFiles, tmp_path: Path, which: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM at all\n")
    missing = str(tmp_path / "missing.pem")
    for path, message in ((missing, "cannot read"), (str(junk), "no PEM|not a PEM")):
        with pytest.raises(SettingError, match=message):
            _load(files, which, path)


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_only_regular_files_of_a_sane_size_are_read(
    files: TlsFiles, tmp_path: Path, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO held the start-up in open() past SIGTERM; /dev/zero grew the process to 21 GB."""
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    big = tmp_path / "big.pem"
    big.write_bytes(files.ca.read_bytes() * 4)
    monkeypatch.setattr(tls, "MAX_PEM_BYTES", len(files.ca.read_bytes()) * 3)
    cases = (
        (str(fifo), "is not a regular file"),
        ("/dev/zero", "is not a regular file"),
        (str(tmp_path), "is a directory"),
        (str(big), "is larger than"),
    )
    for path, message in cases:
        with pytest.raises(SettingError, match=message):
            _load(files, which, path)


def test_a_peer_call_failing_its_tls_handshake_says_so(files: TlsFiles, tmp_path: Path) -> None:
    # A wrong CA, an expired peer certificate: not an outage, and the logs can tell.
    # 0.0.0.0: 127.0.0.2 too, a name its certificate lacks.
    served = health_only_server("0.0.0.0:0", tls=load_server_tls(str(files.cert), str(files.key)))
    other_ca = make_tls_files(tmp_path / "other").ca
    try:
        failed = _health_check_failure(f"127.0.0.1:{served.port}", str(other_ca), timeout_s=5)
        assert failed.code is grpc.StatusCode.UNAVAILABLE
        assert failed.reason == TLS_HANDSHAKE_FAILED
        assert failure_fields(failed)["reason"] == TLS_HANDSHAKE_FAILED  # as logged
        # A trusted certificate that does not name the host dialled (it names localhost and
        # 127.0.0.1): a TLS failure too. Review: it read as the peer being down.
        misnamed = _health_check_failure(f"127.0.0.2:{served.port}", str(files.ca), timeout_s=5)
        assert misnamed.reason == TLS_HANDSHAKE_FAILED, str(misnamed)
    finally:
        served.stop(0)
    # A peer that is down is an outage, no more.
    gone = _health_check_failure(f"127.0.0.1:{served.port}", str(files.ca), timeout_s=2)
    assert gone.reason == ""


def _health_check_failure(address: str, ca: str | None, *, timeout_s: float) -> RemoteError:
    """The RemoteError one health check over TLS (trusting `ca`; without TLS if None) ends in."""
    channel = open_channel(address, None if ca is None else load_peer_tls(ca))
    try:
        with pytest.raises(RemoteError) as failed:
            call_with_retry(
                health_pb2_grpc.HealthStub(channel).Check,
                health_pb2.HealthCheckRequest(),
                timeout_s=timeout_s,
                attempts=1,
            )
        return failed.value
    finally:
        channel.close()


def test_a_tls_server_answers_a_channel_that_trusts_its_ca_and_no_plaintext_one(
    files: TlsFiles,
) -> None:
    served = health_only_server("127.0.0.1:0", tls=load_server_tls(str(files.cert), str(files.key)))
    request = health_pb2.HealthCheckRequest()
    try:
        with open_channel(f"127.0.0.1:{served.port}", load_peer_tls(str(files.ca))) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with open_channel(f"127.0.0.1:{served.port}", None) as channel:
            with pytest.raises(grpc.RpcError) as exc:
                health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        served.stop(0)


def test_a_server_requiring_client_certs_admits_only_callers_presenting_one_its_ca_signed(
    files: TlsFiles, tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path / "other")
    served = health_only_server(
        "127.0.0.1:0",
        tls=requiring_client_certs(load_server_tls(str(files.cert), str(files.key)), str(files.ca)),
    )
    request = health_pb2.HealthCheckRequest()
    target = f"127.0.0.1:{served.port}"
    refused = [
        load_peer_tls(str(files.ca)),  # no certificate
        load_peer_tls(str(files.ca), str(other.cert), str(other.key)),  # another CA's
    ]
    try:
        for peer in refused:
            with open_channel(target, peer) as channel:
                with pytest.raises(grpc.RpcError) as exc:
                    health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
                assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
                # Told from an outage: README names --peer-cert for both reasons.
                assert to_remote_error(exc.value).reason in (
                    CONNECTION_CLOSED,
                    TLS_HANDSHAKE_FAILED,
                ), exc.value.details()
        admitted = load_peer_tls(str(files.ca), str(files.cert), str(files.key))
        with open_channel(target, admitted) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        served.stop(0)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """A TLS handshake between the two contexts in memory; SSLError from the side refusing."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    client_to_server, server_to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(server_to_client, client_to_server, server_hostname="localhost")
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, end, outgoing, incoming in (
            ("client", client_end, client_to_server, to_server),
            ("server", server_end, to_client, server_to_client),
        ):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            incoming.write(outgoing.read())
        if all(done.values()):
            # TLS 1.3 sends the server's verdict on the client's certificate after the
            # client's handshake is done: the server's side is the one that must refuse.
            return
    raise AssertionError("the handshake did not finish")


def test_the_http_apis_tls_requires_a_client_certificate_when_given_client_cas(
    files: TlsFiles, tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path / "other")
    server = requiring_client_certs(
        load_server_tls(str(files.cert), str(files.key)), str(files.ca)
    ).ssl_context()
    plain = ssl.create_default_context(cafile=files.ca)
    with pytest.raises(ssl.SSLError):
        _handshake(server, plain)
    foreign = ssl.create_default_context(cafile=files.ca)
    foreign.load_cert_chain(other.cert, other.key)
    with pytest.raises(ssl.SSLError):
        _handshake(server, foreign)
    trusted = ssl.create_default_context(cafile=files.ca)
    trusted.load_cert_chain(files.cert, files.key)
    _handshake(server, trusted)
    # Without client CAs, a client without a certificate is served, as before.
    _handshake(load_server_tls(str(files.cert), str(files.key)).ssl_context(), plain)


def _publisher(tmp_path: Path) -> list[str]:
    return [
        "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "p"),
        "--operator-address", "127.0.0.1:1", "--operator-api-key", "k", "--site-id", "1",
        "--ssp-address", "127.0.0.1:2", "--ssp-api-key", "k",
    ]  # fmt: skip


SERVES: list[tuple[Main, Callable[[Path], list[str]], str]] = [
    (operator_cli.main, lambda d: ["serve", "--data-dir", str(d)], "UID2_OPERATOR_"),
    (ssp_cli.main, lambda d: ["serve", "--data-dir", str(d)], "UID2_SSP_"),
    (dsp_cli.main, lambda d: ["serve", "--name", "d"], "UID2_DSP_"),
    (publisher_cli.main, _publisher, "UID2_PUBLISHER_"),
]
IDS = ["operator", "ssp", "dsp", "publisher"]


def _one_error_line(main: Main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("main", "base", "prefix"), SERVES, ids=IDS)
def test_serve_wants_the_certificate_and_key_together(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    files: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _one_error_line(main, [*base(tmp_path), "--tls-cert", str(files.cert)], capsys)
    assert f"--tls-key (or {prefix}TLS_KEY) go together" in err
    monkeypatch.setenv(prefix + "TLS_KEY", str(files.key))  # the variable completes the pair
    monkeypatch.setenv(prefix + "TLS_CERT", str(files.cert))
    monkeypatch.setenv(prefix + "LISTEN", "nonsense")  # then fails later, on purpose
    argv = [a for a in base(tmp_path) if a not in ("--listen", "127.0.0.1:0")]
    assert "go together" not in _one_error_line(main, argv, capsys)


@pytest.mark.parametrize(("main", "base", "prefix"), SERVES, ids=IDS)
def test_serve_refuses_a_key_that_does_not_match_without_quoting_it(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    files: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(prefix + "TLS_CERT", str(files.cert))
    monkeypatch.setenv(prefix + "TLS_KEY", str(files.other_key))
    err = _one_error_line(main, base(tmp_path), capsys)
    assert "not the private key of the certificate" in err
    assert "PRIVATE KEY" not in err


@pytest.mark.parametrize(("main", "base", "prefix"), SERVES, ids=IDS)
def test_serve_checks_the_client_ca_setting_in_one_line(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    files: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _one_error_line(main, [*base(tmp_path), "--client-ca", str(files.ca)], capsys)
    assert f"--client-ca (or {prefix}CLIENT_CA) needs --tls-cert" in err
    junk = tmp_path / "junk.pem"
    junk.write_text("nothing\n")
    monkeypatch.setenv(prefix + "TLS_CERT", str(files.cert))
    monkeypatch.setenv(prefix + "TLS_KEY", str(files.key))
    monkeypatch.setenv(prefix + "CLIENT_CA", str(junk))
    err = _one_error_line(main, base(tmp_path), capsys)
    assert f"--client-ca (or {prefix}CLIENT_CA): " in err and "no PEM certificate" in err


@pytest.mark.parametrize(("main", "base", "prefix"), SERVES, ids=IDS)
def test_serve_checks_the_metrics_tls_setting_in_one_line(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    files: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*base(tmp_path), "--metrics-listen", "127.0.0.1:0", "--metrics-tls"]
    err = _one_error_line(main, argv, capsys)
    assert f"--metrics-tls (or {prefix}METRICS_TLS) needs --tls-cert" in err
    monkeypatch.setenv(prefix + "TLS_CERT", str(files.cert))
    monkeypatch.setenv(prefix + "TLS_KEY", str(files.key))
    monkeypatch.setenv(prefix + "METRICS_TLS", "1")
    err = _one_error_line(main, base(tmp_path), capsys)
    assert f"needs --metrics-listen (or {prefix}METRICS_LISTEN)" in err


WITH_PEERS = [s for s in SERVES if s[0] is not operator_cli.main]


@pytest.mark.parametrize(("main", "base", "prefix"), WITH_PEERS, ids=IDS[1:])
def test_serve_checks_the_peer_certificate_settings_in_one_line(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    files: TlsFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key, ca = str(files.cert), str(files.key), str(files.ca)
    argv = [*base(tmp_path), "--peer-ca", ca, "--peer-cert", cert]
    assert f"--peer-key (or {prefix}PEER_KEY) go together" in _one_error_line(main, argv, capsys)
    argv = [*base(tmp_path), "--peer-cert", cert, "--peer-key", key]
    assert f"--peer-cert needs --peer-ca (or {prefix}PEER_CA)" in _one_error_line(
        main, argv, capsys
    )
    argv = [*base(tmp_path), "--peer-ca", ca, "--peer-cert", cert, "--peer-key"]
    err = _one_error_line(main, [*argv, str(files.other_key)], capsys)
    assert "--peer-cert / --peer-key: " in err and "not the private key" in err
    assert "PRIVATE KEY" not in err


@pytest.mark.parametrize(("main", "base", "prefix"), WITH_PEERS, ids=IDS[1:])
def test_serve_refuses_a_peer_ca_file_without_certificates(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("nothing\n")
    err = _one_error_line(main, [*base(tmp_path), "--peer-ca", str(junk)], capsys)
    assert f"--peer-ca (or {prefix}PEER_CA): " in err and "no PEM certificate" in err


# A key, and a self-signed certificate for it, on secp112r1: PEM that OpenSSL writes and
# `cryptography` cannot load (UnsupportedAlgorithm, not a ValueError). Throwaway test material.
_UNSUPPORTED_KEY = """-----BEGIN EC PRIVATE KEY-----
MD4CAQEEDsIxn3E+ALbHYCfFElGcoAcGBSuBBAAGoSADHgAEKbSd0TJeN6VbemYS
/DttmEhknSABdz6IB7Lh1g==
-----END EC PRIVATE KEY-----
"""
_UNSUPPORTED_CERT = """-----BEGIN CERTIFICATE-----
MIIBMTCB/KADAgECAhRs11lqJmjOmBr03zk0k63ghH0d9TAKBggqhkjOPQQDAjAU
MRIwEAYDVQQDDAlsb2NhbGhvc3QwHhcNMjYxMTI5MTA0OTI2WhcNMjYxMTMwMTA0
OTI2WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwMjAQBgcqhkjOPQIBBgUrgQQABgMe
AAQptJ3RMl43pVt6ZhL8O22YSGSdIAF3PogHsuHWo1MwUTAdBgNVHQ4EFgQUrunE
XlUT5F3isOiYf7QaRGRKp28wHwYDVR0jBBgwFoAUrunEXlUT5F3isOiYf7QaRGRK
p28wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgMkADAhAg8AvgOFsK2axPCU
YKcIbkcCDhrxv6a0BCqLP5jAZMPS
-----END CERTIFICATE-----
"""


def test_a_key_or_certificate_of_an_unsupported_type_is_refused(
    files: TlsFiles, tmp_path: Path
) -> None:
    key, cert = tmp_path / "weak.key", tmp_path / "weak.pem"
    key.write_text(_UNSUPPORTED_KEY)
    cert.write_text(_UNSUPPORTED_CERT)
    for cert_file, key_file in ((cert, key), (files.cert, key), (cert, files.key)):
        with pytest.raises(SettingError, match="unsupported"):
            load_server_tls(str(cert_file), str(key_file))


@pytest.mark.parametrize(("main", "base", "prefix"), SERVES, ids=IDS)
def test_serve_refuses_an_unsupported_key_type_in_one_line(
    main: Main,
    base: Callable[[Path], list[str]],
    prefix: str,
    files: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = tmp_path / "weak.key"
    key.write_text(_UNSUPPORTED_KEY)
    monkeypatch.setenv(prefix + "TLS_CERT", str(files.cert))
    monkeypatch.setenv(prefix + "TLS_KEY", str(key))
    err = _one_error_line(main, base(tmp_path), capsys)
    assert "unsupported" in err and "PRIVATE KEY" not in err


def test_a_key_openssl_refuses_is_refused_at_start(tmp_path: Path) -> None:
    """A 1024-bit RSA key passes the checks above, but OpenSSL's default security level
    refuses it: the gRPC port would start and the operator's HTTP API would not."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505  # weak on purpose
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "weak.pem", tmp_path / "weak.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
        pytest.skip("this platform's OpenSSL accepts 1024-bit RSA keys")
    except ssl.SSLError:
        pass
    with pytest.raises(SettingError, match="refused by OpenSSL"):
        load_server_tls(str(cert_path), str(key_path))


def test_a_call_without_tls_to_a_tls_peer_is_told_from_an_outage(files: TlsFiles) -> None:
    """Left by the misconfiguration review: a publisher without --peer-ca calling a TLS
    operator heard a bare "cannot be reached", as for an operator that is down."""
    served = health_only_server("127.0.0.1:0", tls=load_server_tls(str(files.cert), str(files.key)))
    try:
        closed = _health_check_failure(f"127.0.0.1:{served.port}", None, timeout_s=5)
        assert (closed.code, closed.reason) == (grpc.StatusCode.UNAVAILABLE, CONNECTION_CLOSED)
        assert failure_fields(closed)["reason"] == CONNECTION_CLOSED  # as logged
    finally:
        served.stop(0)
    # A peer that is down is not taken for one.
    down = _health_check_failure(f"127.0.0.1:{served.port}", None, timeout_s=5)
    assert (down.code, down.reason) == (grpc.StatusCode.UNAVAILABLE, "")


_LIST = "ipv4:127.0.0.1:50051,127.0.0.1:50052"
_OPERATOR = ["--operator", _LIST, "--operator-api-key", "k"]
# (main, its index in SERVES, the peer flags, how the error names them)
_LISTED_PEERS = [
    (ssp_cli.main, 1, _OPERATOR, "--operator (or UID2_SSP_OPERATOR)"),
    (ssp_cli.main, 1, ["--bidder", f"b={_LIST}"], "--bidder (or UID2_SSP_BIDDERS)"),
    (dsp_cli.main, 2, _OPERATOR, "--operator (or UID2_DSP_OPERATOR)"),
    (publisher_cli.main, 3, ["--operator-address", _LIST], "UID2_PUBLISHER_OPERATOR_ADDRESS"),
    (
        publisher_cli.main,
        3,
        ["--ssp-address", _LIST],
        "--ssp-address (or UID2_PUBLISHER_SSP_ADDRESS)",
    ),
]


@pytest.mark.parametrize(("main", "service", "peer", "named"), _LISTED_PEERS)
def test_serve_refuses_a_list_of_addresses_over_tls_in_one_line(
    main: Main,
    service: int,
    peer: list[str],
    named: str,
    files: TlsFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Deployment review: with TLS every call to an ipv4: list failed "Hostname Verification
    Check failed" (gRPC checks each certificate against the whole list), told to callers as a
    certificate problem, while the service reported SERVING."""
    argv = [*SERVES[service][1](tmp_path), *peer, "--peer-ca", str(files.ca)]
    err = _one_error_line(main, argv, capsys)
    assert named in err and "cannot be dialled over TLS" in err and "dns:///NAME:PORT" in err


def test_one_address_or_a_name_is_dialled_over_tls(files: TlsFiles, tmp_path: Path) -> None:
    for operator in ("ipv4:127.0.0.1:50051", "dns:///operator.internal:50051"):
        argv = [*_publisher(tmp_path), "--operator-address", operator, "--peer-ca", str(files.ca)]
        config = publisher_cli.parse_config(publisher_cli._parser().parse_args(argv))
        assert (config.operator_address, config.peer_tls is not None) == (operator, True)
    # Without TLS the list is dialled as it is: gRPC balances over its addresses.
    argv = [*_publisher(tmp_path), "--operator-address", _LIST]
    config = publisher_cli.parse_config(publisher_cli._parser().parse_args(argv))
    assert config.operator_address == _LIST
