"""The operator as real processes: SIGTERM, kill -9 durability, two processes on one data dir."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.operator.conftest import OK_PRIVACY, add_client, init_dir, md
from tests.support.procs import BIN, ServiceProcess, run_cli, wait_until
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("proc")
    init_dir(d)
    return d


def _serve(d: Path) -> ServiceProcess:
    return ServiceProcess(
        ["uid2-operator", "serve", "--data-dir", str(d), "--listen", "127.0.0.1:0"]
    ).wait_ready(30)


@pytest.fixture
def proc(data_dir: Path) -> Iterator[ServiceProcess]:
    p = _serve(data_dir)
    yield p
    p.kill()


def _stub(p: ServiceProcess) -> pbg.OperatorServiceStub:
    return pbg.OperatorServiceStub(grpc.insecure_channel(p.address))


def _status(stub: pbg.OperatorServiceStub, meta: object, email: str) -> int:
    req = pb.GenerateTokenRequest(dii=pb.Dii(email=email), privacy_settings=OK_PRIVACY)
    return stub.GenerateToken(req, metadata=meta, timeout=5).status  # type: ignore[no-any-return]  # grpc is untyped: its calls return Any


def test_cli_mistakes_exit_2(tmp_path: Path) -> None:
    for args in (
        [
            "client",
            "add",
            "--data-dir",
            str(tmp_path / "absent"),
            "--site-id",
            "1",
            "--name",
            "n",
            "--roles",
            "GENERATOR",
        ],
        [
            "client",
            "add",
            "--data-dir",
            str(tmp_path),
            "--site-id",
            "1",
            "--name",
            "n",
            "--roles",
            "GENERATOR",
        ],
        ["serve", "--data-dir", str(tmp_path / "absent"), "--listen", "127.0.0.1:0"],
        ["serve", "--data-dir", str(tmp_path), "--listen", "nope"],
        ["nonsense"],
    ):
        r = run_cli(["uid2-operator", *args])
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) >= 1
    assert not (tmp_path / "absent").exists()


def test_client_add_prints_contract_json(data_dir: Path) -> None:
    r = run_cli(
        [
            "uid2-operator",
            "client",
            "add",
            "--data-dir",
            str(data_dir),
            "--site-id",
            "7",
            "--name",
            "c",
            "--roles",
            "GENERATOR,MAPPER",
        ]
    )
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert list(obj) == ["name", "site_id", "roles", "api_key", "secret"]
    assert obj["site_id"] == 7 and obj["roles"] == ["GENERATOR", "MAPPER"]
    bad = run_cli(
        [
            "uid2-operator",
            "client",
            "add",
            "--data-dir",
            str(data_dir),
            "--site-id",
            "7",
            "--name",
            "c",
            "--roles",
            "GENERATOR,BOSS",
        ]
    )
    assert bad.returncode == 2 and "BOSS" in bad.stderr


def test_sigterm_drains_and_exits_zero(proc: ServiceProcess, data_dir: Path) -> None:
    c = add_client(data_dir, 10, "term", ["ID_READER", "GENERATOR"])
    stub = _stub(proc)
    assert wait_until(lambda: _ok(stub, md(c)), 1.0)
    # A DII the log must never show, sent through the same process whose log is read below.
    secret = "term.secret@example.com"
    assert _status(stub, md(c), secret) == pb.GENERATE_TOKEN_STATUS_SUCCESS
    stream = stub.WatchOptOuts(pb.WatchOptOutsRequest(since=0), metadata=md(c))
    t = threading.Thread(target=lambda: [None for _ in stream], daemon=True)
    started = time.monotonic()
    try:
        t.start()
        time.sleep(0.2)
        assert proc.terminate(15) == 0
    finally:
        stream.cancel()
    assert time.monotonic() - started < 5
    log = proc.log_text()
    assert secret not in log and c.api_key not in log
    assert any(
        e.get("event") == "rpc" and "request_id" in e and "latency_ms" in e for e in proc.events
    )


def test_a_port_in_use_is_refused_not_shared(proc: ServiceProcess, data_dir: Path) -> None:
    # grpc turns SO_REUSEPORT on by default: a second operator on the same address would then
    # silently take half the connections. It must fail at start instead (one line, exit 2).
    r = run_cli(["uid2-operator", "serve", "--data-dir", str(data_dir), "--listen", proc.address])
    assert r.returncode == 2
    # One line: grpc core's own bind complaint must not come before ours.
    assert r.stderr.splitlines() == [
        f"uid2-operator: error: cannot listen on {proc.address}: Address already in use"
    ]
    c = add_client(data_dir, 10, "still-serving", ["GENERATOR"])
    assert wait_until(lambda: _ok(_stub(proc), md(c)), 1.0)


def test_kill9_keeps_acknowledged_writes(data_dir: Path) -> None:
    p = _serve(data_dir)
    c = add_client(data_dir, 11, "durable", ["OPTOUT", "GENERATOR", "ID_READER"])
    stub = _stub(p)
    assert wait_until(lambda: _ok(stub, md(c)), 1.0)
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            email = f"kill{i}@example.com"
            try:
                stub.OptOut(pb.OptOutRequest(dii=pb.Dii(email=email)), metadata=md(c), timeout=5)
            except grpc.RpcError:
                return
            acked.append(email)
            i += 1

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(1)]
    for t in threads:
        t.start()
    new_client = json.loads(
        run_cli(
            [
                "uid2-operator",
                "client",
                "add",
                "--data-dir",
                str(data_dir),
                "--site-id",
                "12",
                "--name",
                "late",
                "--roles",
                "GENERATOR",
            ]
        ).stdout
    )
    assert (
        run_cli(
            [
                "uid2-operator",
                "keys",
                "rotate",
                "--data-dir",
                str(data_dir),
                "--activation-delay",
                "60",
            ]
        ).returncode
        == 0
    )
    assert wait_until(lambda: len(acked) > 20, 10)
    keys_before = {
        k.id
        for k in stub.GetBidstreamKeys(
            pb.GetBidstreamKeysRequest(), metadata=md(c)
        ).key_container.keys
    }
    p.kill()  # SIGKILL mid-write
    stop.set()
    for t in threads:
        t.join(5)
    q = _serve(data_dir)
    try:
        stub2 = _stub(q)
        for email in acked:
            assert _status(stub2, md(c), email) == pb.GENERATE_TOKEN_STATUS_OPTOUT, email
        late = (("authorization", "Bearer " + new_client["api_key"]),)
        assert _status(stub2, late, "fine@example.com") == pb.GENERATE_TOKEN_STATUS_SUCCESS
        after = {
            k.id
            for k in stub2.GetBidstreamKeys(
                pb.GetBidstreamKeysRequest(), metadata=md(c)
            ).key_container.keys
        }
        assert keys_before <= after
    finally:
        q.terminate()


def test_two_processes_see_each_other_within_1s(data_dir: Path) -> None:
    a, b = _serve(data_dir), _serve(data_dir)
    try:
        c = add_client(data_dir, 13, "twins", ["OPTOUT", "GENERATOR", "ID_READER"])
        sa, sb = _stub(a), _stub(b)
        # Both must have seen the new client (each within 1 s of its writing) before either
        # is asked to use it: waiting on one left the other's first call racing its sync.
        assert wait_until(lambda: _ok(sa, md(c)) and _ok(sb, md(c)), 1.0)
        for i, (src, dst) in enumerate(((sa, sb), (sb, sa))):
            email = f"twin{i}@example.com"
            assert _status(dst, md(c), email) == pb.GENERATE_TOKEN_STATUS_SUCCESS
            src.OptOut(pb.OptOutRequest(dii=pb.Dii(email=email)), metadata=md(c), timeout=5)
            assert _status(src, md(c), email) == pb.GENERATE_TOKEN_STATUS_OPTOUT
            t0 = time.monotonic()
            assert wait_until(
                lambda e=email, d=dst: _status(d, md(c), e) == pb.GENERATE_TOKEN_STATUS_OPTOUT, 1.0
            )
            assert time.monotonic() - t0 < 1.0
        before = {
            k.id
            for k in sb.GetBidstreamKeys(
                pb.GetBidstreamKeysRequest(), metadata=md(c)
            ).key_container.keys
        }
        assert (
            run_cli(["uid2-operator", "keys", "rotate", "--data-dir", str(data_dir)]).returncode
            == 0
        )
        assert wait_until(
            lambda: (
                len(
                    {
                        k.id
                        for k in sb.GetBidstreamKeys(
                            pb.GetBidstreamKeysRequest(), metadata=md(c)
                        ).key_container.keys
                    }
                    - before
                )
                >= 2
            ),
            1.0,
        )
    finally:
        a.terminate()
        b.terminate()


def _ok(stub: pbg.OperatorServiceStub, meta: object) -> bool:
    try:
        _status(stub, meta, "probe@example.com")
    except grpc.RpcError:
        return False
    return True


def _serve_raw(data_dir: Path, *, stderr: int) -> subprocess.Popen[str]:
    """`uid2-operator serve` as a bare process, for signals sent before it is up (ServiceProcess
    waits for it to serve)."""
    return subprocess.Popen(
        [
            str(BIN / "uid2-operator"),
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text("ascii")
    except OSError:
        return False
    mask = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask.split()[1], 16) & (1 << (signum - 1)))


@pytest.mark.parametrize("delay_s", [0.0, 0.05])
def test_a_stop_while_starting_still_exits_zero(data_dir: Path, delay_s: float) -> None:
    """SIGTERM before the service is up (while Python still imports grpc and cryptography, or
    while state loads) drains and exits 0: the console script catches stop signals first.
    Sent once the handler is in: before that, no program could catch it (the interpreter is
    still starting; on a loaded box that alone took over 50 ms)."""
    proc = _serve_raw(data_dir, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: _catches(proc.pid, signal.SIGTERM), 10.0, interval_s=0.001)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_a_stack_dump_request_while_starting_does_not_kill_the_service(data_dir: Path) -> None:
    """SIGUSR1 (dump every thread's stack) is armed before the imports too."""
    proc = _serve_raw(data_dir, stderr=subprocess.PIPE)
    assert wait_until(lambda: _catches(proc.pid, signal.SIGUSR1), 10.0, interval_s=0.001)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "most recent call first" in err


def _threads_taking(pid: int, signum: int) -> list[int]:
    """The process's threads other than the main one that do not block `signum`: those the
    kernel may hand a process-directed signal to."""
    found = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text("ascii")
        except OSError:  # the thread ended since the listing
            continue
        blocked = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16
        )
        if tid != pid and not blocked & (1 << (signum - 1)):
            found.append(tid)
    return found


def test_a_sigterm_delivered_to_a_worker_thread_stops_the_service(data_dir: Path) -> None:
    """Linux may hand `kill`'s SIGTERM to any thread not blocking it; Python then runs the handler
    only when the main thread runs bytecode. The service must stop all the same (it ignored
    such a SIGTERM while the main thread sat in an untimed wait)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "tgkill"):
        pytest.skip("this libc has no tgkill")
    p = _serve(data_dir)
    try:
        workers = _threads_taking(p.proc.pid, signal.SIGTERM)
        assert workers, "no thread but the main one takes SIGTERM"
        # A worker may end between the listing and the signal (ESRCH): try the next one.
        assert any(libc.tgkill(p.proc.pid, tid, signal.SIGTERM) == 0 for tid in workers)
        assert p.proc.wait(5) == 0
        assert wait_until(lambda: any(e.get("event") == "stopped" for e in p.events), 2.0)
        received = [e for e in p.events if e.get("event") == "signal_received"]
        assert [e.get("signal") for e in received] == ["SIGTERM"]
    finally:
        p.kill()
