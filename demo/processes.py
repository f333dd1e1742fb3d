"""Run a service's console script as a real process, wait for it to serve, and keep its logs.

Used by `make demo` and by the tests (through tests/support/procs.py).

Services started with `--listen 127.0.0.1:0` log a JSON line `{"event": "serving", "port": N,
...}` on stderr once they are ready; we read the port from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


class ServiceProcess:
    def __init__(self, args: list[str], *, env: dict[str, str] | None = None) -> None:
        exe = args[0] if os.path.isabs(args[0]) else str(BIN / args[0])
        self.args = [exe, *args[1:]]
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self.port = 0
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            # Own session: a Ctrl-C in the terminal reaches the launcher, which stops children
            # in order, instead of every child at once.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                if event.get("event") == "serving" and not self._ready.is_set():
                    self.port = int(event["port"])
                    self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout_s: float = 30.0) -> ServiceProcess:
        if not self._ready.wait(timeout_s) or not self.port:
            self.kill()
            raise RuntimeError(f"{self.args[0]} did not start:\n{''.join(self.lines[-40:])}")
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            # Ask for its thread stacks (svc_common.stop_signals.catch_stop_signals), then end it.
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.kill()
            self._reader.join(timeout=2)
            tail = "".join(self.lines[-80:])
            raise RuntimeError(
                f"{self.args[0]} did not stop within {timeout_s} s of SIGTERM; its last output, "
                f"thread stacks at the end:\n{tail}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        """What the process wrote so far (all of it, once it has exited)."""
        if self.proc.poll() is not None:
            self._reader.join(timeout=2)
        return "".join(self.lines)


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    exe = str(BIN / args[0])
    return subprocess.run(
        [exe, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


def wait_until(predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
