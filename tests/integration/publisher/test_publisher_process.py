"""`uid2-publisher serve` as a real process against `uid2-operator serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from publisher_svc.cookie import decode_cookie
from tests.integration.publisher.conftest import RecordingSsp
from tests.support.bad_stores import one_error_line, unusable_store
from tests.support.procs import ServiceProcess, run_cli
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2 as pb
from uid2.publisher.v1 import publisher_pb2_grpc
from uid2.ssp.v1 import ssp_pb2_grpc
from uid2_crypto.identity import normalize_email, sha256_b64

pytestmark = pytest.mark.slow
EMAIL = "Process.User@Example.com"


def _start_operator(tmp_path: Path, *serve_flags: str) -> tuple[ServiceProcess, str]:
    d = str(tmp_path / "op")
    assert run_cli(["uid2-operator", "init", "--data-dir", d]).returncode == 0
    assert (
        run_cli(
            ["uid2-operator", "site", "add", "--data-dir", d, "--site-id", "101", "--name", "p"]
        )
    ).returncode == 0
    out = run_cli(
        ["uid2-operator", "client", "add", "--data-dir", d, "--site-id", "101", "--name", "g",
         "--roles", "GENERATOR"]
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)["api_key"]
    proc = ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", d, "--listen", "127.0.0.1:0", *serve_flags]
    ).wait_ready()
    return proc, key


def _start_publisher(
    tmp_path: Path, op: ServiceProcess, key: str, ssp_port: int, *flags: str
) -> ServiceProcess:
    env = {
        "UID2_PUBLISHER_OPERATOR_API_KEY": key,
        "UID2_PUBLISHER_SSP_API_KEY": "ssp-secret-key",
        "UID2_PUBLISHER_SITE_ID": "101",
    }
    return ServiceProcess(
        ["uid2-publisher", "serve", "--data-dir", str(tmp_path / "pub"),
         "--listen", "127.0.0.1:0", "--operator-address", op.address,
         "--ssp-address", f"127.0.0.1:{ssp_port}", *flags],
        env=env,
    ).wait_ready()  # fmt: skip


@pytest.fixture
def operator_proc(tmp_path: Path) -> Iterator[tuple[ServiceProcess, str]]:
    proc, key = _start_operator(tmp_path)
    yield proc, key
    proc.terminate()


@pytest.fixture
def recording_ssp() -> Iterator[tuple[RecordingSsp, int]]:
    ssp = RecordingSsp()  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ssp_pb2_grpc.add_SspServiceServicer_to_server(ssp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield ssp, port
    server.stop(0)


@pytest.mark.parametrize("mode", ["server", "client"])
def test_serve_as_process(
    tmp_path: Path,
    operator_proc: tuple[ServiceProcess, str],
    recording_ssp: tuple[RecordingSsp, int],
    mode: str,
) -> None:
    op, key = operator_proc
    ssp, ssp_port = recording_ssp
    pub = _start_publisher(tmp_path, op, key, ssp_port, "--storage-mode", mode)
    try:
        with grpc.insecure_channel(pub.address) as ch:
            stub = publisher_pb2_grpc.PublisherServiceStub(ch)
            r = stub.Login(
                pb.LoginRequest(
                    user_id="proc-user",
                    email=EMAIL,
                    privacy_settings=operator_pb2.PrivacySettings(
                        transparency_notice_accepted=True
                    ),
                ),
                timeout=10,
            )
            assert r.status == pb.LOGIN_STATUS_SUCCESS
            if mode == "server":
                tok = stub.GetAdvertisingToken(
                    pb.GetAdvertisingTokenRequest(user_id="proc-user"), timeout=10
                ).advertising_token
                subject: dict[str, Any] = {"user_id": "proc-user"}
            else:
                tok = decode_cookie(r.cookie.value).advertising_token
                subject = {"cookie_value": r.cookie.value}
            ad = stub.ServeAd(
                pb.ServeAdRequest(placement_id="s", page_domain="example.com", **subject),
                timeout=10,
            )
            assert ad.token_sent and ssp.requests[-1].advertising_token == tok
    finally:
        assert pub.terminate() == 0
    logs = pub.log_text()
    serving = [e for e in pub.events if e.get("event") == "serving"]
    assert len(serving) == 1 and serving[0]["port"] == pub.port
    assert serving[0]["service"] == "publisher"
    # no DII, hashes, tokens or keys in the logs
    for secret in (
        EMAIL,
        EMAIL.lower(),
        sha256_b64(normalize_email(EMAIL)),
        tok,
        tok[:40],
        key,
        "ssp-secret-key",
    ):
        assert secret not in logs


def test_cli_mistakes_print_one_line_and_exit_2(tmp_path: Path) -> None:
    r = run_cli(["uid2-publisher", "serve"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--data-dir" in r.stderr
    r = run_cli(
        ["uid2-publisher", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
         "--operator-address", "127.0.0.1:1", "--operator-api-key", "k", "--site-id", "5",
         "--ssp-address", "127.0.0.1:2", "--ssp-api-key", "s", "--storage-mode", "cookie"]
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "uid2-publisher: error: --storage-mode (or UID2_PUBLISHER_STORAGE_MODE): "
        "must be server or client"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing half-written by a usage error
    # An address in use: one line and exit 2 (the store it opened first is whole and reusable).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        r = run_cli(
            ["uid2-publisher", "serve", "--data-dir", str(tmp_path / "bound"), "--listen", address,
             "--operator-address", "127.0.0.1:1", "--operator-api-key", "k", "--site-id", "5",
             "--ssp-address", "127.0.0.1:2", "--ssp-api-key", "s"]
        )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"uid2-publisher: error: cannot start: cannot listen on {address}" in r.stderr
    r = run_cli(["uid2-publisher", "bogus"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert run_cli(["uid2-publisher", "serve", "--help"]).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["bound"]


@pytest.mark.parametrize("kind", ["garbage", "empty", "damaged", "directory", "uncreatable"])
def test_unusable_store_is_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    data_dir, named = unusable_store(tmp_path, "publisher.sqlite3", kind)
    r = run_cli(
        ["uid2-publisher", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
         "--operator-address", "127.0.0.1:1", "--operator-api-key", "k", "--site-id", "5",
         "--ssp-address", "127.0.0.1:2", "--ssp-api-key", "s"]
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr, "uid2-publisher: error: cannot start: ")
    assert str(named) in line
    if kind == "empty":  # a copy cut short: not started on as a new store with no identities
        assert "empty file (0 bytes)" in line and named.stat().st_size == 0


def test_a_hung_operator_does_not_hold_up_impressions(
    tmp_path: Path, recording_ssp: tuple[RecordingSsp, int]
) -> None:
    # Tokens due for refresh after 1 s and expired after 3 s; the operator is then SIGSTOPped
    # (it accepts connections but never answers: each call waits out the 2 s deadline).
    op, key = _start_operator(tmp_path, "--refresh-from", "1", "--token-lifetime", "3")
    ssp, ssp_port = recording_ssp
    pub = _start_publisher(
        tmp_path, op, key, ssp_port, "--refresh-interval", "0.1", "--serve-refresh-budget", "0.2"
    )
    stopped = False
    try:
        with grpc.insecure_channel(pub.address) as ch:
            stub = publisher_pb2_grpc.PublisherServiceStub(ch)
            ok = operator_pb2.PrivacySettings(transparency_notice_accepted=True)
            stub.Login(pb.LoginRequest(user_id="h", email=EMAIL, privacy_settings=ok), timeout=10)
            logged_in = time.monotonic()
            held = stub.GetAdvertisingToken(
                pb.GetAdvertisingTokenRequest(user_id="h"), timeout=10
            ).advertising_token
            os.kill(op.proc.pid, signal.SIGSTOP)  # before any refresh is due
            stopped = True
            time.sleep(max(0.0, logged_in + 1.2 - time.monotonic()))  # past refresh_from

            def ad() -> tuple[float, pb.ServeAdResponse]:
                started = time.monotonic()
                r = stub.ServeAd(
                    pb.ServeAdRequest(user_id="h", placement_id="s", page_domain="example.com"),
                    timeout=10,
                )
                return time.monotonic() - started, r

            # Due, unexpired: the held token goes out at once, refresher in flight or not.
            while time.monotonic() < logged_in + 2.5:
                took, r = ad()
                assert took < 0.6 and r.token_sent, took
                assert ssp.requests[-1].advertising_token == held
                time.sleep(0.1)
            time.sleep(max(0.0, logged_in + 3.2 - time.monotonic()))  # the token has expired
            for _ in range(3):
                took, r = ad()
                assert took < 0.6 and not r.token_sent, took
            os.kill(op.proc.pid, signal.SIGCONT)
            stopped = False
            deadline = time.monotonic() + 15
            while not ad()[1].token_sent:  # refreshed once the operator answers again
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert ssp.requests[-1].advertising_token != held
    finally:
        if stopped:
            os.kill(op.proc.pid, signal.SIGCONT)
        assert pub.terminate() == 0
        op.terminate()


def test_an_operator_key_of_the_wrong_role_is_a_warning_at_log_level_warning(
    tmp_path: Path,
    operator_proc: tuple[ServiceProcess, str],
    recording_ssp: tuple[RecordingSsp, int],
) -> None:
    # The on-call review's repro: an ID_READER key, --log-level WARNING, two Logins. The log
    # held only the `serving` line: the refusal was on the per-call lines alone (info).
    op, _ = operator_proc
    out = run_cli(
        ["uid2-operator", "client", "add", "--data-dir", str(tmp_path / "op"), "--site-id",
         "101", "--name", "reader", "--roles", "ID_READER"]
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    reader_key = json.loads(out.stdout)["api_key"]
    _, ssp_port = recording_ssp
    pub = _start_publisher(tmp_path, op, reader_key, ssp_port, "--log-level", "WARNING")
    try:
        with grpc.insecure_channel(pub.address) as ch:
            stub = publisher_pb2_grpc.PublisherServiceStub(ch)
            for user in ("u1", "u2"):
                with pytest.raises(grpc.RpcError) as failed:
                    stub.Login(
                        pb.LoginRequest(
                            user_id=user,
                            email=EMAIL,
                            privacy_settings=operator_pb2.PrivacySettings(
                                transparency_notice_accepted=True
                            ),
                        ),
                        timeout=10,
                    )
                assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        assert pub.terminate() == 0
    warned = [e for e in pub.events if e.get("event") == "peer_failed"]
    assert len(warned) == 1, pub.events
    assert (warned[0]["level"], warned[0]["peer"], warned[0]["reason"]) == (
        "warning",
        "operator",
        "OPERATOR_REJECTED",
    )
    assert warned[0]["peer_code"] == "PERMISSION_DENIED" and warned[0]["failures_since_last"] == 1
    logs = pub.log_text()
    assert EMAIL not in logs and reader_key not in logs
