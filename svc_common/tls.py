"""TLS for what the services serve (gRPC, and the operator's HTTP API) and for the gRPC
connections they open to each other.

Off unless configured: without TLS an API key crosses the network in the clear in every call's
metadata, so a deployment whose services talk across hosts should turn it on. Files are read and
checked once, at start-up (`load_server_tls`, `load_peer_tls`): a certificate that does not parse
or a key that does not match it is a one-line error then, not a failed handshake per call later.
No message ever quotes a file's contents."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from svc_common.settings import SettingError


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate chain and private key (PEM), as read from their files."""

    cert_file: Path
    key_file: Path
    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)

    def grpc_credentials(self) -> Any:
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)])

    def ssl_context(self) -> ssl.SSLContext:
        """For the operator's HTTP API (aiohttp): TLS 1.2 or later, Python's default ciphers."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class PeerTls:
    """The CA certificates (PEM) a service trusts for the servers it connects to."""

    ca_file: Path
    root_certificates: bytes = field(repr=False)


def open_channel(
    target: str, tls: PeerTls | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to `target` (HOST:PORT): TLS verified against `tls`'s CAs when given (the
    server's certificate must name HOST), else plaintext."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.root_certificates)
    return grpc.secure_channel(target, credentials, options=list(options))


def load_server_tls(cert_file: str, key_file: str) -> ServerTls:
    """Reads and checks a certificate chain and its private key; SettingError if they cannot
    serve (unreadable, not PEM, an encrypted key, a key type it cannot use, a key that is not
    the certificate's)."""
    cert_path, key_path = Path(cert_file), Path(key_file)
    chain = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    leaf = _certificates(chain, cert_path)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # the key is encrypted and no password was given
        raise SettingError(f"{key_path}: an encrypted private key; give it unencrypted") from None
    except ValueError:
        raise SettingError(f"{key_path}: not a PEM private key") from None
    except UnsupportedAlgorithm:  # a curve or key type `cryptography` cannot use
        raise SettingError(f"{key_path}: a private key of an unsupported type") from None
    try:
        leaf_key = leaf.public_key()
    except UnsupportedAlgorithm:
        raise SettingError(f"{cert_path}: a certificate for an unsupported key type") from None
    if _public_bytes(key.public_key()) != _public_bytes(leaf_key):
        raise SettingError(f"{key_path}: not the private key of the certificate in {cert_path}")
    tls = ServerTls(cert_path, key_path, chain, key_pem)
    try:
        # What OpenSSL itself refuses at its default security level (a 1024-bit RSA key, say)
        # would otherwise start the gRPC port and fail only the operator's HTTP API.
        tls.ssl_context()
    except ssl.SSLError as exc:
        reason = exc.reason or "unusable"
        raise SettingError(f"{cert_path}: refused by OpenSSL ({reason})") from None
    return tls


def load_peer_tls(ca_file: str) -> PeerTls:
    """Reads the CA certificates to trust; SettingError if there are none."""
    path = Path(ca_file)
    pem = _read(path, "CA certificates")
    _certificates(pem, path)
    return PeerTls(path, pem)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _certificates(pem: bytes, path: Path) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        found = []
    if not found:
        raise SettingError(f"{path}: no PEM certificate in it")
    return found


def _public_bytes(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
