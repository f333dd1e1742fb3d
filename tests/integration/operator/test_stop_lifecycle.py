"""Stopping an operator releases what it opened, and a second stop is harmless."""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

from operator_svc.config import OperatorConfig
from operator_svc.server import create_server
from tests.integration.operator.conftest import init_dir


def _fds_under(directory: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory))
    return count


def test_stop_twice_is_harmless(tmp_path: Path) -> None:
    init_dir(tmp_path)
    served, _ = create_server(OperatorConfig(data_dir=tmp_path, http_listen="127.0.0.1:0"))
    served.stop(0.5)
    served.stop(0.5)  # raised RuntimeError("Event loop is closed") before


def test_stop_closes_every_connection_to_the_store(tmp_path: Path) -> None:
    init_dir(tmp_path)
    gc.disable()  # what stop closes must not depend on a garbage collection
    try:
        served, _ = create_server(OperatorConfig(data_dir=tmp_path))
        assert _fds_under(tmp_path) > 0
        served.stop(0.5)
        assert _fds_under(tmp_path) == 0
    finally:
        gc.enable()
