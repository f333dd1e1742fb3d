"""`make demo` itself: it walks the workflow and exits 0, and Ctrl-C mid-way stops every service
it started (their ports close) and exits 130."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "demo"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": str(Path(sys.executable).parent), "DATA_DIR": str(tmp_path / "data")},
    )


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The demo's whole output once it exits. If it does not within `timeout_s`, fail with its
    output and thread stacks (SIGUSR1), and kill what it started rather than leave it running."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return out
    except subprocess.TimeoutExpired:
        children: list[str] = []
        with contextlib.suppress(OSError):  # it may have ended just now
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        proc.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out = "(no output: the demo's pipe stayed open)"
        pytest.fail(f"the demo did not end within {timeout_s} s; its output:\n{out[-8000:]}")


def _ports(line: str) -> list[int]:
    return [int(p) for p in re.findall(r":(\d+)", line)]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_walks_the_workflow_and_exits_0(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    out = _finish(proc, 120)
    assert proc.returncode == 0, out
    for step in range(1, 9):
        assert f"[step {step}]" in out
    assert "TOKEN_DISPOSITION_VALID" in out and "TOKEN_DISPOSITION_DROPPED_OPTOUT" in out
    assert "[client side]" in out and "/v2/token/client-generate: HTTP 200, success" in out
    assert "copycat.example: HTTP 403 invalid_http_origin" in out
    assert "chain ended" in out and "no service left running" in out
    # Checked by the demo against the operator's own log lines, not merely printed.
    assert "did not call generate again" in out and "(the operator was not called)" in out
    # The demo's own wording, not a bare "NOT" a shortened token could contain by chance.
    assert "unexpected" not in out and "did NOT drop" not in out
    up = next(line for line in out.splitlines() if line.startswith("services up"))
    assert not any(_listening(p) for p in _ports(up))


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_every_service(tmp_path: Path, presses: int) -> None:
    """Twice: the second press lands while the services are being stopped, which must not
    abort stopping the rest (they run in their own sessions, out of the terminal's reach)."""
    proc = _start(tmp_path)
    assert proc.stdout is not None
    up = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not up:
        line = proc.stdout.readline()
        if line.startswith("services up"):
            up = line
    ports = _ports(up)
    assert len(ports) == 5 and all(_listening(p) for p in ports)
    proc.send_signal(signal.SIGINT)
    if presses == 2:  # once the first service is down, while the operator still runs
        assert wait_until(lambda: not _listening(ports[-1]), 20)
        assert _listening(ports[0]), "every service stopped before the second press"
        proc.send_signal(signal.SIGINT)
    rest = _finish(proc, 60)
    assert proc.returncode == 130, rest
    assert "every service stopped" in rest
    assert not any(_listening(p) for p in ports)


def _services_of(data_dir: Path) -> list[int]:
    """Pids of the processes whose command line names `data_dir` (the demo's services)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if str(data_dir) in cmdline and " serve" in cmdline.replace("\0", " "):
                pids.append(int(entry.name))
    return pids


def test_ctrl_c_while_a_service_starts_leaves_none_running(tmp_path: Path) -> None:
    """The press lands after a service was spawned but before it logged `serving`."""
    proc = _start(tmp_path)
    data_dir = tmp_path / "data"
    assert wait_until(
        lambda: any(
            "uid2-publisher" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            for p in _services_of(data_dir)
        ),
        60,
        interval_s=0.005,
    )
    proc.send_signal(signal.SIGINT)
    rest = _finish(proc, 60)
    assert proc.returncode == 130, rest
    left = _services_of(data_dir)
    for pid in left:  # do not leave them behind for the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} service(s) still running after Ctrl-C"


def test_a_data_dir_already_used_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # A second run on the first one's data found its publisher account and opt-outs there
    # and failed half-way; now it says so at once and starts nothing.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "operator").mkdir()
    proc = _start(tmp_path)
    out = _finish(proc, 30)
    assert proc.returncode == 2, out
    assert f"demo: DATA_DIR {tmp_path / 'data'} is not an empty directory" in out
    assert "services up" not in out
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["operator"]
