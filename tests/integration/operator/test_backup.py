"""`uid2-operator backup` while a real operator serves and takes opt-outs, then `restore` into
a new data dir and serve that: everything acknowledged before the backup began is there, and
the keys and salts are the same ones (old tokens refresh, raw UID2s do not change)."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import grpc
import pytest

from tests.integration.operator.conftest import OK_PRIVACY, add_client, init_dir, md
from tests.support.bad_stores import one_error_line
from tests.support.procs import ServiceProcess, run_cli
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg

pytestmark = pytest.mark.slow


def _serve(d: Path) -> ServiceProcess:
    return ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(d), "--listen", "127.0.0.1:0"]
    ).wait_ready(30)


def _raw_uid(stub: pbg.OperatorServiceStub, meta: object, email: str) -> str:
    got = stub.MapIdentity(pb.MapIdentityRequest(dii=[pb.Dii(email=email)]), metadata=meta)
    return str(got.results[0].raw_uid)


def test_a_backup_taken_while_serving_restores_to_a_working_operator(tmp_path: Path) -> None:
    live_dir, backup, restored = tmp_path / "live", tmp_path / "op.backup", tmp_path / "restored"
    init_dir(live_dir)
    c = add_client(live_dir, 11, "pub", ["OPTOUT", "GENERATOR", "MAPPER"])
    p = _serve(live_dir)
    acked: list[str] = []
    stop = threading.Event()
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(p.address))
        before = stub.GenerateToken(
            pb.GenerateTokenRequest(
                dii=pb.Dii(email="kept@example.com"), privacy_settings=OK_PRIVACY
            ),
            metadata=md(c),
        ).identity
        raw_before = _raw_uid(stub, md(c), "kept@example.com")

        def writer() -> None:  # opt-outs keep landing while the backup runs
            i = 0
            while not stop.is_set():
                email = f"opt{i}@example.com"
                stub.OptOut(pb.OptOutRequest(dii=pb.Dii(email=email)), metadata=md(c), timeout=5)
                acked.append(email)
                i += 1

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        while len(acked) < 20:
            stop.wait(0.01)
        acked_before_backup = list(acked)
        r = run_cli(["uid2-operator", "backup", "--data-dir", str(live_dir), "--to", str(backup)])
        stop.set()
        t.join(10)
    finally:
        stop.set()
        p.terminate()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"backup": str(backup), "bytes": backup.stat().st_size}
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert len(acked) > len(acked_before_backup)  # writes went on during the backup

    r = run_cli(["uid2-operator", "restore", "--data-dir", str(restored), "--from", str(backup)])
    assert r.returncode == 0, r.stderr
    q = _serve(restored)
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(q.address))
        for email in acked_before_backup:
            got = stub.GenerateToken(
                pb.GenerateTokenRequest(dii=pb.Dii(email=email), privacy_settings=OK_PRIVACY),
                metadata=md(c),
            )
            assert got.status == pb.GENERATE_TOKEN_STATUS_OPTOUT, email
        refreshed = stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=before.refresh_token))
        assert refreshed.status == pb.REFRESH_TOKEN_STATUS_SUCCESS
        assert _raw_uid(stub, md(c), "kept@example.com") == raw_before
    finally:
        q.terminate()

    # Restoring over a data dir that holds a store is refused, one line, exit 2.
    r = run_cli(["uid2-operator", "restore", "--data-dir", str(live_dir), "--from", str(backup)])
    assert r.returncode == 2
    assert "already holds a store" in one_error_line(r.stderr, "uid2-operator: error: ")
