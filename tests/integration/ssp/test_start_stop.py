"""An SSP or DSP asked to stop while it still waits for an unreachable operator's opt-out
backlog stops promptly instead of sitting out the whole wait (10 s) first."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bidstream.decryptor.runtime import start_decryptor
from dsp_svc.config import DspConfig
from dsp_svc.server import create_server as create_dsp
from ssp_svc.config import SspConfig
from ssp_svc.server import create_server as create_ssp
from svc_common.clock import SystemClock
from tests.support.procs import ServiceProcess, run_cli, wait_until


@pytest.fixture
def dead_operator() -> Iterator[str]:
    # Bound but not listening: every connection is refused, so the backlog never comes.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_operator() -> Iterator[str]:
    # Listening but never answering: a key request waits out its whole deadline.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_a_decryptor_started_after_the_stop_does_not_wait_for_keys(silent_operator: str) -> None:
    stop = threading.Event()
    stop.set()
    began = time.monotonic()
    decryptor = start_decryptor(silent_operator, "k", SystemClock(), give_up=stop)
    took = time.monotonic() - began
    decryptor.stop()
    assert took < 1.5  # a key request to this operator takes its 2 s deadline, or more


def _started_despite_stop(start: Callable[[threading.Event], tuple[Any, int]]) -> float:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    served, _ = start(stop)
    took = time.monotonic() - began
    served.stop(0)
    return took


def test_ssp_start_up_gives_up_waiting_for_opt_outs_once_stopped(
    tmp_path: Path, dead_operator: str
) -> None:
    config = SspConfig(
        listen="127.0.0.1:0", data_dir=tmp_path, operator=dead_operator, operator_api_key="k"
    )
    assert _started_despite_stop(lambda stop: create_ssp(config, stop=stop)) < 3.0


def test_dsp_start_up_gives_up_waiting_for_opt_outs_once_stopped(dead_operator: str) -> None:
    config = DspConfig(name="d", listen="127.0.0.1:0", operator=dead_operator, operator_api_key="k")
    assert _started_despite_stop(lambda stop: create_dsp(config, stop=stop)) < 3.0


@pytest.mark.slow
@pytest.mark.parametrize("service", ["ssp", "dsp"])
def test_sigterm_while_waiting_for_the_operator_exits_zero_at_once_never_serving(
    tmp_path: Path, dead_operator: str, service: str
) -> None:
    if service == "ssp":
        added = run_cli(["uid2-ssp", "publisher", "add", "--data-dir", str(tmp_path),
                         "--name", "p", "--domain", "a.example"])  # fmt: skip
        assert added.returncode == 0, added.stderr
        own = ["--data-dir", str(tmp_path)]
    else:
        own = ["--name", "d"]
    proc = ServiceProcess(
        [f"uid2-{service}", "serve", *own, "--listen", "127.0.0.1:0",
         "--operator", dead_operator, "--operator-api-key", "k"]
    )  # fmt: skip
    try:
        assert wait_until(
            lambda: any(
                e.get("event") == "optout_stream_broken" and e.get("code") == "UNAVAILABLE"
                for e in proc.events
            ),
            10,
        ), "".join(proc.lines)
        proc.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert proc.proc.wait(5) == 0
        assert time.monotonic() - began < 3.0
        assert wait_until(lambda: any(e.get("event") == "stopped" for e in proc.events), 2)
    finally:
        proc.kill()
    # A supervisor watching for "serving" (or the service's ready line) must not see a
    # service that is already stopping: they came between the give-up and the stop.
    events = [e.get("event") for e in proc.events]
    assert "serving" not in events and f"{service}_ready" not in events, events
    tail = [e for e in events if e in ("optouts_wait_given_up", "signal_received", "stopped")]
    assert tail == ["optouts_wait_given_up", "signal_received", "stopped"], events
