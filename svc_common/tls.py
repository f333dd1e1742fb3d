"""TLS for what the services serve (gRPC, and the operator's HTTP API) and for the gRPC
connections they open to each other.

Off unless configured: without TLS an API key crosses the network in the clear in every call's
metadata, so a deployment whose services talk across hosts should turn it on. Files are read and
checked once, at start-up (`load_server_tls`, `load_peer_tls`): a certificate that does not parse
or a key that does not match it is a one-line error then, not a failed handshake per call later.
No message ever quotes a file's contents.

Mutual TLS, also off unless configured: a server given CAs for its callers (`client_ca`) admits
only connections whose client certificate chains to them, and a service given its own
certificate for its peers (`PeerTls.cert_chain`) presents it. That is the authentication for
the calls that carry no API key (PublisherService, a DSP's Bid); any certificate those CAs
signed is admitted, so they should be CAs that sign only the intended callers."""

from __future__ import annotations

import dataclasses
import datetime
import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from svc_common.settings import SettingError

# Per file: (inode, size, mtime in ns), or None for one that cannot be read.
FileStates = tuple[tuple[int, int, int] | None, ...]


def file_states(paths: tuple[Path, ...]) -> FileStates:
    """What changes when a file is rewritten or replaced (a renamed-in copy, a Kubernetes
    secret's symlink swap: stat follows links)."""
    found: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
            continue
        found.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate chain and private key (PEM), as read from their files."""

    cert_file: Path
    key_file: Path
    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    # The CAs a caller's certificate must chain to (PEM), or None to ask callers for none.
    client_ca_file: Path | None = None
    client_ca: bytes | None = field(default=None, repr=False)
    # The files' states (file_states) just before they were read: a renewal landing after
    # that is told apart from what was read (svc_common.tls_reload).
    states: FileStates = ()

    @property
    def requires_client_certs(self) -> bool:
        return self.client_ca is not None

    def ssl_context(self) -> ssl.SSLContext:
        """For the operator's HTTP API (aiohttp): TLS 1.2 or later, Python's default ciphers."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.client_ca_file)
        return context


@dataclass(frozen=True)
class PeerTls:
    """The CA certificates (PEM) a service trusts for the servers it connects to and, for peers
    that require one, the certificate chain and key it presents to them."""

    ca_file: Path
    root_certificates: bytes = field(repr=False)
    cert_file: Path | None = None
    key_file: Path | None = None
    cert_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    states: FileStates = ()  # of ca_file, then cert_file and key_file, as in ServerTls


def load_server_tls(cert_file: str, key_file: str) -> ServerTls:
    """Reads and checks a certificate chain and its private key; SettingError if they cannot
    serve (unreadable, not PEM, an encrypted key, a key type it cannot use, a key that is not
    the certificate's)."""
    cert_path, key_path = Path(cert_file), Path(key_file)
    states = file_states((cert_path, key_path))
    chain, key_pem = _certificate_and_key(cert_path, key_path)
    return ServerTls(cert_path, key_path, chain, key_pem, states=states)


def requiring_client_certs(tls: ServerTls, client_ca_file: str) -> ServerTls:
    """`tls` admitting only callers whose certificate chains to the CAs in `client_ca_file`;
    SettingError if it holds no CA certificate OpenSSL takes."""
    path = Path(client_ca_file)
    states = tls.states + file_states((path,))
    pem = _ca_certificates(path)
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise SettingError(f"{path}: refused by OpenSSL ({exc.reason or 'unusable'})") from None
    return dataclasses.replace(tls, client_ca_file=path, client_ca=pem, states=states)


def load_peer_tls(
    ca_file: str, cert_file: str | None = None, key_file: str | None = None
) -> PeerTls:
    """Reads the CA certificates to trust and, when given, the certificate and key to present;
    SettingError if there are no CA certificates or the certificate and key cannot serve."""
    path = Path(ca_file)
    states = file_states((path,))
    pem = _ca_certificates(path)
    if cert_file is None or key_file is None:
        return PeerTls(path, pem, states=states)
    cert_path, key_path = Path(cert_file), Path(key_file)
    states += file_states((cert_path, key_path))
    chain, key_pem = _certificate_and_key(cert_path, key_path)
    return PeerTls(path, pem, cert_path, key_path, chain, key_pem, states)


def _certificate_and_key(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
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
    # Every caller would refuse it: at start a one-line error, on a reload the files in use
    # stay (an old pair restored over a renewal must not take over). One not valid yet is
    # let through: a CA whose clock runs a little ahead issues such, and a reload that refused
    # it would not look at the same files again once it is valid.
    if leaf.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise SettingError(
            f"{cert_path}: the certificate expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    try:
        # What OpenSSL itself refuses at its default security level (a 1024-bit RSA key, say)
        # would otherwise fail every handshake later (or, on the operator, only its HTTP API).
        ssl.create_default_context().load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        reason = exc.reason or "unusable"
        raise SettingError(f"{cert_path}: refused by OpenSSL ({reason})") from None
    except OSError as exc:  # gone since read above: a renewal swapping the files just now
        raise SettingError(f"cannot read {cert_path} or {key_path}: {exc.strerror}") from None
    return chain, key_pem


def _ca_certificates(path: Path) -> bytes:
    pem = _read(path, "CA certificates")
    _certificates(pem, path)
    return pem


# A system-wide CA bundle is some 200 KiB; a certificate chain or key a few KiB.
MAX_PEM_BYTES = 4 * 1024 * 1024


def _read(path: Path, what: str) -> bytes:
    """The file's bytes. Only a regular file of at most MAX_PEM_BYTES: a FIFO blocked the
    start-up in open() past SIGTERM, and /dev/zero took 21 GB before it was killed."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise SettingError(f"the {what} {path} is {kind}")
        with path.open("rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise SettingError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise SettingError(f"the {what} {path} is larger than {MAX_PEM_BYTES} bytes")
    return data


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
