"""Certificates renewed while serving: new handshakes use the new files (gRPC and the HTTP API's
TLS context) once a check is due, connections already open keep theirs, and files caught
half-written leave the old pair in use until they are whole."""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from demo.processes import wait_until
from svc_common.clock import ManualClock
from svc_common.tls import ServerTls, load_peer_tls, load_server_tls, requiring_client_certs
from svc_common.tls_reload import RECHECK_S, ReloadingChannel, ReloadingServerTls
from tests.support.tls_certs import TlsFiles, make_tls_files
from tests.unit.common.test_tls import _handshake


@pytest.fixture
def served_files(tmp_path: Path) -> TlsFiles:
    """The files the server is given: a copy of one CA's set, later overwritten by another's."""
    first = make_tls_files(tmp_path / "first")
    live = tmp_path / "live"
    live.mkdir()
    paths = {}
    for name in ("ca", "cert", "key"):
        paths[name] = live / getattr(first, name).name
        shutil.copy(getattr(first, name), paths[name])
    return TlsFiles(ca=paths["ca"], cert=paths["cert"], key=paths["key"], other_key=first.other_key)


def _renew(target: Path, source: Path) -> None:
    """As a renewal agent writes: a whole new file renamed over the old one."""
    partial = target.with_name(target.name + ".tmp")
    shutil.copy(source, partial)
    os.replace(partial, target)


def _renew_all(live: TlsFiles, new: TlsFiles) -> None:
    for name in ("ca", "cert", "key"):
        _renew(getattr(live, name), getattr(new, name))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000)


@contextmanager
def _serve(reloading: ReloadingServerTls) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", reloading.grpc_credentials())
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def _check(channel: grpc.Channel) -> bool:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        return False
    return True


def _trusting(target: str, ca: Path, client: TlsFiles | None = None) -> grpc.Channel:
    key = None if client is None else client.key.read_bytes()
    chain = None if client is None else client.cert.read_bytes()
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key, chain)
    # A channel of its own, never a shared subchannel: each is a new handshake.
    return grpc.secure_channel(target, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


def test_grpc_handshakes_use_renewed_files_once_a_check_is_due(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    old_ca = tmp_path / "old-ca.pem"
    shutil.copy(served_files.ca, old_ca)
    new = make_tls_files(tmp_path / "new")
    tls = load_server_tls(str(served_files.cert), str(served_files.key))
    with _serve(ReloadingServerTls(tls, monotonic=clock)) as target:
        before = _trusting(target, old_ca)
        assert _check(before)
        _renew_all(served_files, new)
        # Not yet due: still the old certificate.
        assert not _check(_trusting(target, new.ca))
        clock.advance(int(RECHECK_S * 1000))
        with capture_logs() as logs:
            assert _check(_trusting(target, new.ca))
        assert not _check(_trusting(target, old_ca))
        assert [e["event"] for e in logs] == ["tls_reloaded"]
        # A connection made before the renewal keeps the certificate it agreed on.
        assert _check(before)


def test_half_written_files_leave_the_old_pair_in_use_until_whole(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    old_ca = tmp_path / "old-ca.pem"
    shutil.copy(served_files.ca, old_ca)
    new = make_tls_files(tmp_path / "new")
    tls = load_server_tls(str(served_files.cert), str(served_files.key))
    with _serve(ReloadingServerTls(tls, monotonic=clock)) as target:
        _renew(served_files.cert, new.cert)  # the key not yet
        with capture_logs() as logs:
            for _ in range(3):
                clock.advance(int(RECHECK_S * 1000))
                assert _check(_trusting(target, old_ca))
        # One warning for the one half-written state, naming files, never their contents.
        assert [e["event"] for e in logs] == ["tls_reload_failed"]
        assert "not the private key" in logs[0]["error"] and "PRIVATE" not in logs[0]["error"]
        _renew(served_files.key, new.key)
        clock.advance(int(RECHECK_S * 1000))
        assert _check(_trusting(target, new.ca))


def test_an_expired_pair_renamed_in_is_not_served(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    # An old pair restored over the current one: every caller would refuse it.
    old_ca = tmp_path / "old-ca.pem"
    shutil.copy(served_files.ca, old_ca)
    expired = make_tls_files(
        tmp_path / "expired",
        valid_from=datetime.timedelta(days=-30),
        valid_until=datetime.timedelta(days=-1),
    )
    tls = load_server_tls(str(served_files.cert), str(served_files.key))
    with _serve(ReloadingServerTls(tls, monotonic=clock)) as target:
        _renew_all(served_files, expired)
        clock.advance(int(RECHECK_S * 1000))
        with capture_logs() as logs:
            assert _check(_trusting(target, old_ca))  # the valid pair still in use
        assert [e["event"] for e in logs] == ["tls_reload_failed"]
        assert "expired on" in logs[0]["error"]


def test_renewed_client_cas_admit_callers_the_new_ca_signed(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    server_ca = tmp_path / "server-ca.pem"
    shutil.copy(served_files.ca, server_ca)
    callers = make_tls_files(tmp_path / "callers")  # a new CA for callers, and a caller's cert
    tls = requiring_client_certs(
        load_server_tls(str(served_files.cert), str(served_files.key)), str(served_files.ca)
    )
    with _serve(ReloadingServerTls(tls, monotonic=clock)) as target:
        assert not _check(_trusting(target, server_ca, callers))
        _renew(served_files.ca, callers.ca)
        clock.advance(int(RECHECK_S * 1000))
        assert _check(_trusting(target, server_ca, callers))


def test_the_http_apis_context_uses_renewed_files(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    old_ca = tmp_path / "old-ca.pem"
    shutil.copy(served_files.ca, old_ca)
    new = make_tls_files(tmp_path / "new")
    tls: ServerTls = load_server_tls(str(served_files.cert), str(served_files.key))
    server = ReloadingServerTls(tls, monotonic=clock).ssl_context()
    _handshake(server, ssl.create_default_context(cafile=old_ca))
    _renew_all(served_files, new)
    clock.advance(int(RECHECK_S * 1000))
    _handshake(server, ssl.create_default_context(cafile=new.ca))
    with pytest.raises(ssl.SSLError):
        _handshake(server, ssl.create_default_context(cafile=old_ca))


def test_the_http_apis_context_admits_callers_of_renewed_client_cas(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    server_ca = tmp_path / "server-ca.pem"
    shutil.copy(served_files.ca, server_ca)
    callers = make_tls_files(tmp_path / "callers")
    tls = requiring_client_certs(
        load_server_tls(str(served_files.cert), str(served_files.key)), str(served_files.ca)
    )
    server = ReloadingServerTls(tls, monotonic=clock).ssl_context()
    caller = ssl.create_default_context(cafile=server_ca)
    caller.load_cert_chain(callers.cert, callers.key)
    with pytest.raises(ssl.SSLError):
        _handshake(server, caller)
    _renew(served_files.ca, callers.ca)
    clock.advance(int(RECHECK_S * 1000))
    _handshake(server, caller)


def test_a_peer_channel_presents_renewed_certificates_to_new_connections(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    """The server admits only callers the first CA signed: once the caller's files are renewed
    (another CA's certificate) and a look is due, its calls go over a new connection, which
    that server refuses; until then they go over the connection they have."""
    caller_dir = tmp_path / "caller"
    caller_dir.mkdir()
    caller = TlsFiles(
        ca=caller_dir / "ca.pem",
        cert=caller_dir / "client.pem",
        key=caller_dir / "client.key",
        other_key=served_files.other_key,
    )
    for name in ("ca", "cert", "key"):
        shutil.copy(getattr(served_files, name), getattr(caller, name))
    tls = requiring_client_certs(
        load_server_tls(str(served_files.cert), str(served_files.key)), str(served_files.ca)
    )
    # The server's own files are not renewed here: only the caller's are.
    with _serve(ReloadingServerTls(tls, monotonic=ManualClock(0))) as target:
        peer = load_peer_tls(str(caller.ca), str(caller.cert), str(caller.key))
        with ReloadingChannel(target, peer, monotonic=clock, grace_s=0.05) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            assert stub.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            old = channel.current()[1]
            other = make_tls_files(tmp_path / "other")
            _renew(caller.cert, other.cert)
            _renew(caller.key, other.key)
            assert _check(channel)  # no look due yet
            clock.advance(int(RECHECK_S * 1000))
            with capture_logs() as logs:
                assert not _check(channel)  # a new connection, with the new certificate
            assert [e["event"] for e in logs] == ["peer_tls_reloaded"]
            # The replaced channel is closed once its grace is over.
            assert wait_until(lambda: _closed(old), 2.0)


def _closed(channel: grpc.Channel) -> bool:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except ValueError:  # grpc: "Cannot invoke RPC on closed channel!"
        return True
    except grpc.RpcError:
        return False
    return False


def test_a_peer_channel_keeps_its_files_while_renewed_ones_do_not_load(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    tls = load_server_tls(str(served_files.cert), str(served_files.key))
    with _serve(ReloadingServerTls(tls, monotonic=ManualClock(0))) as target:
        peer_ca = tmp_path / "peer-ca.pem"
        shutil.copy(served_files.ca, peer_ca)
        with ReloadingChannel(target, load_peer_tls(str(peer_ca)), monotonic=clock) as channel:
            peer_ca.write_text("renewal in progress\n")
            with capture_logs() as logs:
                for _ in range(3):
                    clock.advance(int(RECHECK_S * 1000))
                    assert _check(channel)
            assert [e["event"] for e in logs] == ["peer_tls_reload_failed"]
            assert channel.current()[0] == 0
            # Whole again (the same CA): a new channel, and calls on it work; a server stream
            # made through the stub before the renewal follows too.
            watch = health_pb2_grpc.HealthStub(channel).Watch
            _renew(peer_ca, served_files.ca)
            clock.advance(int(RECHECK_S * 1000))
            assert _check(channel)
            assert channel.current()[0] == 1
            stream = watch(health_pb2.HealthCheckRequest(), timeout=5)
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
            stream.cancel()


def test_a_renewal_between_reading_the_files_and_serving_them_is_still_picked_up(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    """Files are read when the CLI parses its flags; the operator then loads its store before
    it serves. A renewal in between must not become the state that counts as in use."""
    new = make_tls_files(tmp_path / "new")
    tls = load_server_tls(str(served_files.cert), str(served_files.key))
    peer = load_peer_tls(str(served_files.ca))
    _renew_all(served_files, new)
    server = ReloadingServerTls(tls, monotonic=clock)
    with ReloadingChannel("127.0.0.1:1", peer, monotonic=clock) as channel:
        clock.advance(int(RECHECK_S * 1000))
        assert server.current().cert_chain == new.cert.read_bytes()
        assert channel.current()[0] == 1


def test_closing_a_channel_ends_the_timers_of_the_channels_it_replaced(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path
) -> None:
    # Only timers started here: an earlier test's may still end meanwhile.
    earlier = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}

    def timers() -> list[threading.Thread]:
        return [
            t for t in threading.enumerate() if isinstance(t, threading.Timer) and t not in earlier
        ]

    peer = load_peer_tls(str(served_files.ca))
    channel = ReloadingChannel("127.0.0.1:1", peer, monotonic=clock, grace_s=600)
    for i in range(3):
        _renew(served_files.ca, make_tls_files(tmp_path / f"ca{i}").ca)
        clock.advance(int(RECHECK_S * 1000))
        assert channel.current()[0] == i + 1
    assert len(timers()) == 3
    channel.close()
    assert wait_until(lambda: not timers(), 2.0)


def test_files_gone_mid_renewal_leave_the_http_api_serving_what_it_has(
    served_files: TlsFiles, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal swapping the files between their read and OpenSSL's own look at them (the
    race is forced here): the handshake must still complete, on the files in use, rather than
    fail in the ClientHello callback with a traceback."""
    old_ca = tmp_path / "old-ca.pem"
    shutil.copy(served_files.ca, old_ca)
    tls = load_server_tls(str(served_files.cert), str(served_files.key))
    server = ReloadingServerTls(tls, monotonic=clock).ssl_context()
    _renew_all(served_files, make_tls_files(tmp_path / "new"))

    def gone(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", gone)
    clock.advance(int(RECHECK_S * 1000))
    with capture_logs() as logs:
        _handshake(server, ssl.create_default_context(cafile=old_ca))
    assert [e["event"] for e in logs] == ["tls_reload_failed"]
    assert "No such file" in logs[0]["error"]
