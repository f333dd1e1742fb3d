"""A stop signal that arrives while a service is still starting is kept for when it is up."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from svc_common import stop_signals
from svc_common.logging import configure_logging
from svc_common.stop_signals import StopEvent, catch_stop_signals, wait_for_signal


@pytest.mark.usefixtures("restore_handlers")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_serving_is_not_lost(signum: signal.Signals) -> None:
    stop = catch_stop_signals()
    os.kill(os.getpid(), signum)  # "during start-up": before anyone waits
    assert stop.wait(5)
    wait_for_signal(stop)  # returns at once instead of blocking


@pytest.mark.usefixtures("restore_handlers")
def test_sigusr1_dumps_every_threads_stack(capfd: pytest.CaptureFixture[str]) -> None:
    catch_stop_signals()
    os.kill(os.getpid(), signal.SIGUSR1)
    err = capfd.readouterr().err
    assert "most recent call first" in err and "test_stop_signals.py" in err


@pytest.mark.usefixtures("restore_handlers")
def test_a_stop_signal_delivered_to_another_thread_still_ends_the_wait() -> None:
    # The kernel may hand a process's SIGTERM to any thread; Python runs the handler only when
    # the main thread runs bytecode, which an untimed wait never did (a publisher ignored a
    # SIGTERM that way). A watchdog ends the wait after 5 s so the old code fails, not hangs.
    stop = catch_stop_signals()
    sleeper = threading.Thread(target=time.sleep, args=(10,), daemon=True)
    sleeper.start()
    assert sleeper.ident is not None
    poke = threading.Timer(0.1, signal.pthread_kill, (sleeper.ident, signal.SIGTERM))
    watchdog = threading.Timer(5.0, stop.set)
    poke.start()
    watchdog.start()
    started = time.monotonic()
    try:
        wait_for_signal(stop)
    finally:
        watchdog.cancel()
        poke.cancel()
    assert time.monotonic() - started < 4.0, "the wait ended only by the watchdog"


@pytest.mark.usefixtures("restore_handlers")
def test_the_handler_writes_nothing_and_the_wait_logs_which_signal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A handler that logs can land inside an interrupted write to stderr and raise "reentrant
    # call" into it; so it only records, and the wait logs once the main thread is its own.
    configure_logging(service="test")
    stop = catch_stop_signals()
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.wait(5)
    assert capsys.readouterr().err == ""
    wait_for_signal(stop)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["signal"]) for e in lines] == [("signal_received", "SIGINT")]


def test_a_signal_handled_inside_the_wait_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The handler runs in the main thread between two bytecodes, which may be inside that
    # thread's own wait. With a threading.Event, set() then needed the lock the wait held and
    # the service hung (a stress run showed it); StopEvent takes no lock. Here the "signal"
    # arrives from within the wait's sleep.
    stop = StopEvent()

    def sleep(_seconds: float) -> None:
        stop.record(signal.SIGTERM)

    monkeypatch.setattr(
        stop_signals, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic)
    )
    assert stop.wait(5) and stop.signal_name == "SIGTERM"


def test_wait_times_out_when_nothing_comes() -> None:
    stop = StopEvent()
    began = time.monotonic()
    assert not stop.wait(0.3)
    assert 0.25 < time.monotonic() - began < 3.0


@pytest.mark.usefixtures("restore_handlers")
def test_a_stop_arriving_while_the_handlers_are_swapped_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Until catch_stop_signals installs its handlers, the early one records into _early_stop;
    # a signal landing there mid-swap must still reach the returned event.
    early = StopEvent()
    monkeypatch.setattr(stop_signals, "_early_stop", early)
    monkeypatch.setattr(stop_signals, "_dump_stacks_on_usr1", lambda: early.record(signal.SIGTERM))
    stop = catch_stop_signals()
    assert stop.is_set() and stop.signal_name == "SIGTERM"


def test_a_stop_set_by_code_is_logged_as_requested_not_as_a_signal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(service="test")
    stop = StopEvent()
    stop.set()
    wait_for_signal(stop)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in lines] == ["stop_requested"]


@pytest.mark.usefixtures("restore_handlers")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("when", ["import", "main"])
def test_an_admin_command_stopped_by_a_signal_says_so_in_one_line(
    signum: signal.Signals,
    when: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A Ctrl-C during the CLI's imports printed a KeyboardInterrupt traceback; a SIGTERM was a
    # bare signal death. `when`: the signal comes while the CLI module is being imported, or
    # while its main() runs.
    stop_here = f"os.kill(os.getpid(), {int(signum)}); time.sleep(5)"
    body = f"import os, time\n{stop_here if when == 'import' else ''}\n"
    body += f"def main():\n    {stop_here if when == 'main' else 'pass'}\n    return 0\n"
    name = f"fake_cli_{when}_{int(signum)}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["uid2-fake", "site", "list"])
    assert stop_signals.run_console(name) == 2
    err = capsys.readouterr().err
    assert err == f"uid2-fake: error: stopped by {signum.name} before it finished\n"


@pytest.mark.usefixtures("restore_handlers")
def test_sighup_neither_stops_nor_kills_a_service_and_is_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Deployment review: SIGHUP (a closed terminal, a supervisor's "reload") killed `serve`
    without a drain, exit 129."""
    configure_logging(service="test")
    stop = catch_stop_signals()
    os.kill(os.getpid(), signal.SIGHUP)  # this process: the default action would end the run
    os.kill(os.getpid(), signal.SIGHUP)
    assert not stop.wait(0.5) and stop.hangups == 2
    threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGTERM)).start()
    wait_for_signal(stop)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["level"], e.get("received")) for e in lines] == [
        ("signal_ignored", "warning", 2),
        ("signal_received", "info", None),
    ]
