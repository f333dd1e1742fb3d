"""A real operator process whose store stops taking writes: OptOut answers UNAVAILABLE with
ErrorInfo STORE_WRITE_FAILED, not INTERNAL; nothing refused is honoured, nothing acknowledged
is lost, and reads keep working.

- the disk refuses writes (RLIMIT_FSIZE: every write past a size fails, as on a full disk);
- the store file is deleted, or another file moved over it, while the operator runs (SQLite
  would go on writing to the file it opened, which no restart opens)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from operator_svc.store.sqlite_store import DB_FILE
from svc_common.grpc_client import error_info
from tests.integration.operator.conftest import OK_PRIVACY, add_client, init_dir, md
from tests.support.bad_stores import one_error_line
from tests.support.procs import BIN, ServiceProcess, wait_until
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg

pytestmark = pytest.mark.slow

# Room for a few dozen opt-out commits in the WAL, which starts empty; the shared-memory index
# (32 KiB) must fit too. Writes to the main file never fit: it is tens of MB after `init`.
FILE_SIZE_LIMIT = 96 * 1024
_LIMITED = (
    "import os, resource, sys;"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])));"
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def _serve(d: Path, limit: int | None = None, *, http: bool = False) -> ServiceProcess:
    cmd = [str(BIN / "uid2-operator"), "serve", "--data-dir", str(d), "--listen", "127.0.0.1:0"]
    if http:
        cmd += ["--http-listen", "127.0.0.1:0"]
    if limit is not None:
        cmd = [sys.executable, "-c", _LIMITED, str(limit), *cmd]
    return ServiceProcess(cmd).wait_ready(30)


def _generate(stub: pbg.OperatorServiceStub, meta: object, email: str) -> int:
    req = pb.GenerateTokenRequest(dii=pb.Dii(email=email), privacy_settings=OK_PRIVACY)
    return stub.GenerateToken(req, metadata=meta, timeout=5).status  # type: ignore[no-any-return]  # grpc is untyped: its calls return Any


def test_a_disk_that_refuses_writes_is_unavailable_and_loses_nothing(tmp_path: Path) -> None:
    init_dir(tmp_path)
    c = add_client(tmp_path, 11, "full", ["OPTOUT", "GENERATOR"])
    p = _serve(tmp_path, FILE_SIZE_LIMIT)
    acked: list[str] = []
    refused: list[str] = []
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(p.address))
        for i in range(400):
            email = f"full{i}@example.com"
            try:
                stub.OptOut(pb.OptOutRequest(dii=pb.Dii(email=email)), metadata=md(c), timeout=5)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                info = error_info(err)
                assert info is not None and info.reason == "STORE_WRITE_FAILED"
                refused.append(email)
                if len(refused) == 5:
                    break
            else:
                assert not refused, "a write succeeded after the disk refused one"
                acked.append(email)
        assert acked and len(refused) == 5, (len(acked), len(refused))
        # Reads need no disk: tokens are still issued, and only acknowledged opt-outs count.
        assert _generate(stub, md(c), "fresh@example.com") == pb.GENERATE_TOKEN_STATUS_SUCCESS
        assert _generate(stub, md(c), acked[-1]) == pb.GENERATE_TOKEN_STATUS_OPTOUT
        assert _generate(stub, md(c), refused[0]) == pb.GENERATE_TOKEN_STATUS_SUCCESS
        assert p.terminate() == 0
    finally:
        p.kill()
    events = [e.get("event") for e in p.events]
    assert "store_write_failed" in events and "unhandled_exception" not in events

    q = _serve(tmp_path)  # the disk fixed
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(q.address))
        for email in acked:
            assert _generate(stub, md(c), email) == pb.GENERATE_TOKEN_STATUS_OPTOUT, email
        stub.OptOut(pb.OptOutRequest(dii=pb.Dii(email=refused[0])), metadata=md(c), timeout=5)
        assert _generate(stub, md(c), refused[0]) == pb.GENERATE_TOKEN_STATUS_OPTOUT
    finally:
        q.terminate()


def _opt_out(stub: pbg.OperatorServiceStub, meta: object, email: str) -> str:
    """OK, or the ErrorInfo reason of the refusal (UNAVAILABLE only)."""
    try:
        stub.OptOut(pb.OptOutRequest(dii=pb.Dii(email=email)), metadata=meta, timeout=5)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
        info = error_info(err)
        return info.reason if info is not None else ""
    return "OK"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_file_gone_from_its_path_takes_no_more_writes(tmp_path: Path, how: str) -> None:
    init_dir(tmp_path)
    c = add_client(tmp_path, 11, "moved", ["OPTOUT", "GENERATOR"])
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(tmp_path, copy)
    p = _serve(tmp_path)
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(p.address))
        assert _opt_out(stub, md(c), "before@example.com") == "OK"
        db = tmp_path / DB_FILE
        if how == "deleted":
            for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"):
                (tmp_path / name).unlink(missing_ok=True)
        else:
            os.replace(copy / DB_FILE, db)  # a backup restored over the live file, say
        assert _opt_out(stub, md(c), "after@example.com") == "STORE_WRITE_FAILED"
        assert _generate(stub, md(c), "after@example.com") == pb.GENERATE_TOKEN_STATUS_SUCCESS
        assert _generate(stub, md(c), "fresh@example.com") == pb.GENERATE_TOKEN_STATUS_SUCCESS
    finally:
        p.terminate()
    assert any(e.get("event") == "store_file_replaced" for e in p.events)


def test_an_admin_command_the_disk_refuses_is_one_line_and_exit_2(tmp_path: Path) -> None:
    init_dir(tmp_path)
    cmd = [str(BIN / "uid2-operator"), "salts", "rotate", "--fraction", "1"]
    r = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(FILE_SIZE_LIMIT), *cmd, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and r.stdout == ""  # no store warning beside the outcome
    line = one_error_line(r.stderr, "uid2-operator: error: ")
    assert "could not be written" in line


def test_a_backup_the_disk_refuses_names_the_copy_not_the_store(tmp_path: Path) -> None:
    init_dir(tmp_path)  # a store of several MB: 2^20 salt buckets
    target = tmp_path.parent / f"{tmp_path.name}.backup"
    cmd = [str(BIN / "uid2-operator"), "backup", "--data-dir", str(tmp_path), "--to", str(target)]
    r = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(FILE_SIZE_LIMIT), *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and r.stdout == ""
    line = one_error_line(r.stderr, "uid2-operator: error: ")
    assert f"{target} cannot be written" in line, line
    assert not target.exists()


def test_a_wal_file_removed_under_a_running_operator_loses_nothing_it_acknowledged(
    tmp_path: Path,
) -> None:
    """The WAL file removed ("temporary files" cleaned up) while the operator runs: within a
    second or so, with no write to find it, the operator saves what the removed file held into
    the store file, says so once, and reports NOT_SERVING. A crash after that (kill -9) then
    loses no acknowledged opt-out; before, every one since the last checkpoint was gone."""
    init_dir(tmp_path)
    c = add_client(tmp_path, 11, "wal", ["OPTOUT", "GENERATOR"])
    p = _serve(tmp_path)
    emails = [f"wal{i}@example.com" for i in range(5)]
    try:
        channel = grpc.insecure_channel(p.address)
        stub = pbg.OperatorServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for email in emails:
            assert _opt_out(stub, md(c), email) == "OK"
        (tmp_path / (DB_FILE + "-wal")).unlink()

        def not_serving() -> bool:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            return bool(status == health_pb2.HealthCheckResponse.NOT_SERVING)

        assert wait_until(not_serving, 10)
        assert _generate(stub, md(c), emails[0]) == pb.GENERATE_TOKEN_STATUS_OPTOUT  # reads go on
        assert _opt_out(stub, md(c), "after@example.com") == "STORE_WRITE_FAILED"
    finally:
        p.kill()  # SIGKILL: no clean close to checkpoint anything
    assert [e.get("event") for e in p.events].count("store_file_replaced") == 1
    q = _serve(tmp_path)
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(q.address))
        for email in emails:
            assert _generate(stub, md(c), email) == pb.GENERATE_TOKEN_STATUS_OPTOUT, email
    finally:
        q.terminate()


def _http_health(p: ServiceProcess) -> int:
    port = next(e["http_port"] for e in p.events if e.get("event") == "serving")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ops/healthcheck", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_a_removed_wal_file_then_another_writer_then_a_clean_stop_loses_nothing(
    tmp_path: Path,
) -> None:
    """The WAL file removed; the operator saves what it held and says 503 on the HTTP API's
    health; an admin command then writes (into a WAL file of its own), and the operator is
    stopped as usual. Its clean close used to checkpoint its own, removed WAL file over the
    admin's and remove the admin's WAL file by name: a corrupt store, or the admin's write gone
    (a reviewer's runs). Now the lost store is left to the process exit, and a restart has
    everything. (Before the operator's finding the admin command cannot even read the store:
    the WAL index names frames the new WAL file lacks.)"""
    init_dir(tmp_path)
    c = add_client(tmp_path, 11, "wal", ["OPTOUT", "GENERATOR"])
    p = _serve(tmp_path, http=True)
    emails = [f"kept{i}@example.com" for i in range(3)]
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(p.address))
        for email in emails:
            assert _opt_out(stub, md(c), email) == "OK"
        assert _http_health(p) == 200
        (tmp_path / (DB_FILE + "-wal")).unlink()
        assert wait_until(lambda: _http_health(p) == 503, 10)
        late = add_client(tmp_path, 12, "added-after", ["GENERATOR"])
        assert p.terminate() == 0
    finally:
        p.kill()
    check = sqlite3.connect(tmp_path / DB_FILE)
    try:
        assert check.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    finally:
        check.close()
    q = _serve(tmp_path)
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(q.address))
        for email in emails:
            assert _generate(stub, md(c), email) == pb.GENERATE_TOKEN_STATUS_OPTOUT, email
        assert _generate(stub, md(late), "new@example.com") == pb.GENERATE_TOKEN_STATUS_SUCCESS
    finally:
        q.terminate()


def test_an_admin_command_told_to_try_again_costs_the_operator_nothing(tmp_path: Path) -> None:
    """Right after the WAL file goes, an admin command meets a short read and is told to try
    again; its failed open leaves an empty WAL file at the path. The operator still saves what
    the removed file held (it took that file for another writer's, and dropped 5 of 5
    acknowledged opt-outs at its clean stop, in a reviewer's run)."""
    init_dir(tmp_path)
    c = add_client(tmp_path, 11, "wal", ["OPTOUT", "GENERATOR"])
    p = _serve(tmp_path)
    emails = [f"retry{i}@example.com" for i in range(5)]
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(p.address))
        for email in emails:
            assert _opt_out(stub, md(c), email) == "OK"
        (tmp_path / (DB_FILE + "-wal")).unlink()
        subprocess.run(
            [str(BIN / "uid2-operator"), "site", "list", "--data-dir", str(tmp_path)],
            capture_output=True,
            timeout=60,
        )  # told to try again, or (the operator's look came first) answered
        assert wait_until(lambda: any(e.get("event") == "store_file_replaced" for e in p.events))
        assert p.terminate() == 0
    finally:
        p.kill()
    assert not any(e.get("event") == "store_wal_not_saved" for e in p.events)
    q = _serve(tmp_path)
    try:
        stub = pbg.OperatorServiceStub(grpc.insecure_channel(q.address))
        for email in emails:
            assert _generate(stub, md(c), email) == pb.GENERATE_TOKEN_STATUS_OPTOUT, email
    finally:
        q.terminate()
