"""A stop signal that arrives while a `serve` is still starting: the service drains and exits
0, and never logs "serving" first (a supervisor watching for it would see a service that is
already stopping). All four services, in-process: the signal comes just as the server has
started, before the "serving" line would be written."""

from __future__ import annotations

import importlib
import json
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dsp_svc import cli as dsp_cli
from operator_svc import cli as operator_cli
from publisher_svc import cli as publisher_cli
from ssp_svc import cli as ssp_cli
from svc_common import metrics
from svc_common.logging import configure_logging

Main = Callable[[Sequence[str] | None], int]


def _operator(tmp_path: Path) -> list[str]:
    assert operator_cli.main(["init", "--data-dir", str(tmp_path)]) == 0
    return ["serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]


def _publisher(tmp_path: Path) -> list[str]:
    return ["serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
            "--operator-address", "127.0.0.1:1", "--operator-api-key", "k", "--site-id", "1",
            "--ssp-address", "127.0.0.1:2", "--ssp-api-key", "k"]  # fmt: skip


def _ssp(tmp_path: Path) -> list[str]:
    return ["serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]


def _dsp(tmp_path: Path) -> list[str]:
    return ["serve", "--name", "d", "--listen", "127.0.0.1:0"]


# (the module whose create_server starts the service, its CLI's main, its serve arguments)
SERVES = [
    ("operator_svc.server", operator_cli.main, _operator),
    ("publisher_svc.server", publisher_cli.main, _publisher),
    ("ssp_svc.server", ssp_cli.main, _ssp),
    ("dsp_svc.server", dsp_cli.main, _dsp),
]
SERVE_IDS = ["operator", "publisher", "ssp", "dsp"]


@pytest.mark.usefixtures("restore_handlers")
@pytest.mark.parametrize(("module", "main", "argv"), SERVES, ids=SERVE_IDS)
def test_a_stop_during_start_up_drains_without_logging_serving(
    module: str,
    main: Main,
    argv: Callable[[Path], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = argv(tmp_path)
    real = importlib.import_module(module).create_server

    def started_then_stopped(*a: Any, **kw: Any) -> Any:
        served = real(*a, **kw)
        os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns: catch_stop_signals
        return served

    monkeypatch.setattr(f"{module}.create_server", started_then_stopped)
    capsys.readouterr()
    assert main(args) == 0
    events = [json.loads(line).get("event") for line in capsys.readouterr().err.splitlines()]
    assert "serving" not in events, events
    assert events[-2:] == ["signal_received", "stopped"] or events[-3:] == [
        "signal_received", "stopping", "stopped"
    ], events  # fmt: skip


@pytest.mark.usefixtures("restore_handlers")
@pytest.mark.parametrize(("module", "main", "argv"), SERVES, ids=SERVE_IDS)
def test_serving_and_stopped_are_logged_at_any_log_level(
    module: str,
    main: Main,
    argv: Callable[[Path], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A supervisor reads the bound port from "serving" (port 0 picks it) and waits for
    "stopped": at --log-level WARNING both were dropped (misconfiguration review)."""
    monkeypatch.setattr(metrics, "wait_for_signal", lambda stop: None)  # stopped at once
    args = argv(tmp_path)
    capsys.readouterr()
    try:
        assert main([*args, "--log-level", "WARNING"]) == 0
    finally:
        # structlog's level is global: left at WARNING, later tests' capture_logs() saw no
        # INFO line at all. Back to what every other in-process serve leaves.
        configure_logging("INFO")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    lifecycle = [line for line in lines if line["event"] in ("serving", "stopped")]
    assert [line["event"] for line in lifecycle] == ["serving", "stopped"], lines
    assert lifecycle[0]["port"] > 0
    # Every other line is a warning (the SSP's empty store): the level did apply.
    assert all(line["level"] == "warning" for line in lines if line not in lifecycle), lines


@pytest.mark.usefixtures("restore_handlers")
def test_serve_names_a_variable_no_setting_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(metrics, "wait_for_signal", lambda stop: None)
    monkeypatch.setenv("UID2_DSP_BASE_PRICES", "9")  # --base-price's is UID2_DSP_BASE_PRICE
    monkeypatch.setenv("UID2_DSP_API_KEY", "not shown")
    capsys.readouterr()
    assert dsp_cli.main(_dsp(tmp_path)) == 0
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    warned = [line for line in lines if line["event"] == "unknown_setting_variables"]
    assert [line["variables"] for line in warned] == [["UID2_DSP_API_KEY", "UID2_DSP_BASE_PRICES"]]
    assert "not shown" not in err  # names only: a value may be a key
