"""`python -m operator_svc` (as likely a container's command as the console script) is the
console script: it called the CLI directly, so a SIGTERM during an admin command was a bare
signal death (143) and a serve stopped while starting died instead of exiting 0."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operator_svc.store import DB_FILE


def test_an_admin_command_stopped_by_sigterm_says_so_and_exits_2(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "operator_svc"]
    subprocess.run([*run, "init", "--data-dir", str(tmp_path)], check=True, capture_output=True)
    holder = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the command waits for the write lock
    try:
        add = [*run, "site", "add", "--data-dir", str(tmp_path), "--site-id", "5", "--name", "x"]
        proc = subprocess.Popen(add, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        # Python runs the handler once SQLite's busy wait returns to it: when the lock is free.
        time.sleep(0.5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert err == "uid2-operator: error: stopped by SIGTERM before it finished\n", err
    assert out == ""
    listed = subprocess.run(
        [*run, "site", "list", "--data-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert '"site_id": 5' not in listed.stdout  # rolled back


@pytest.mark.parametrize("svc", ["operator_svc", "publisher_svc", "ssp_svc", "dsp_svc"])
def test_every_service_runs_as_a_module(svc: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", svc, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "serve" in done.stdout, done.stderr
