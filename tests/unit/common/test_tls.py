"""TLS settings: files are checked once, at start-up, and refused in one line (exit 2) without
quoting them; a server started with them serves TLS only, and a channel trusting the CA reaches
it."""

from __future__ import annotations

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
from svc_common.grpc_server import start_server
from svc_common.settings import SettingError
from svc_common.tls import load_peer_tls, load_server_tls, open_channel
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


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_missing_and_non_pem_files_are_refused(files: TlsFiles, tmp_path: Path, which: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM at all\n")
    missing = str(tmp_path / "missing.pem")
    for path, message in ((missing, "cannot read"), (str(junk), "no PEM|not a PEM")):
        with pytest.raises(SettingError, match=message):
            if which == "cert":
                load_server_tls(path, str(files.key))
            elif which == "key":
                load_server_tls(str(files.cert), path)
            else:
                load_peer_tls(path)


def test_a_tls_server_answers_a_channel_that_trusts_its_ca_and_no_plaintext_one(
    files: TlsFiles,
) -> None:
    served = start_server(
        listen="127.0.0.1:0",
        domain="test",
        register=lambda server: None,
        service_names=[],
        tls=load_server_tls(str(files.cert), str(files.key)),
    )
    served.set_serving(True)
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


@pytest.mark.parametrize(
    ("main", "base", "prefix"), [s for s in SERVES if s[0] is not operator_cli.main], ids=IDS[1:]
)
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
    import ssl

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
