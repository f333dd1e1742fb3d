"""Stop signals for `serve`. SIGINT and SIGTERM must drain the service and exit 0 whenever they
arrive, even while it is still starting: `run_console` catches them before a console script's
heavy imports (grpc, cryptography: ~0.15 s), `catch_stop_signals` takes over before start-up,
and `wait_for_signal` waits for one. Light on purpose: only the standard library."""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import signal
import sys
import threading
from typing import Any


class StopEvent(threading.Event):
    """Set by SIGINT or SIGTERM; `signal_name` says which arrived first."""

    signal_name: str | None = None

    def record(self, signum: int, _frame: Any = None) -> None:
        """The signal handler. No I/O here: it runs in the main thread wherever that was,
        possibly inside a write to stderr a signal interrupted, and writing to the same stream
        from here raises "reentrant call" into that code. wait_for_signal logs it instead."""
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self.set()


# Set by the early handlers `run_console` installs, until `catch_stop_signals` replaces them.
_early_stop = StopEvent()


def run_console(cli_module: str) -> int:
    """A console script's entry: for `serve`, stop signals are caught from here on; then the
    service's CLI (`cli_module`.main) is imported and run."""
    if sys.argv[1:2] == ["serve"]:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _early_stop.record)
        _dump_stacks_on_usr1()
    return int(importlib.import_module(cli_module).main())


def catch_stop_signals() -> StopEvent:
    """From now on SIGINT and SIGTERM set the returned event instead of killing the process.
    Called first thing in `serve`, so a stop during start-up still drains and exits 0."""
    stop = StopEvent()
    if _early_stop.is_set():  # a stop that came while the service was still importing
        stop.signal_name = _early_stop.signal_name
        stop.set()
    _dump_stacks_on_usr1()
    signal.signal(signal.SIGINT, stop.record)
    signal.signal(signal.SIGTERM, stop.record)
    return stop


# How often the waiting main thread wakes to run Python's signal handlers (see wait_for_signal).
_SIGNAL_POLL_S = 0.2


def wait_for_signal(stop: threading.Event | None = None) -> None:
    """Blocks the main thread until SIGINT or SIGTERM (or until `stop`, from
    `catch_stop_signals`, is set).

    Why a timed wait in a loop: the kernel may deliver a process's SIGTERM to any thread that
    does not block it (grpc's, the refresher's, a pool's). Python then only flags it, and runs
    the handler when the main thread next executes bytecode; an untimed wait is never woken,
    so the service ignored the stop (seen: a publisher still serving 15 s after SIGTERM in a
    loaded test run)."""
    event = stop or catch_stop_signals()
    while not event.wait(_SIGNAL_POLL_S):
        pass
    import structlog  # the entry imports nothing heavy before its handlers

    structlog.get_logger("server").info(
        "signal_received", signal=getattr(event, "signal_name", None)
    )


def _dump_stacks_on_usr1() -> None:
    """`kill -USR1 <pid>` writes every thread's stack to stderr: how to see where a service that
    will not stop (or answer) is stuck, without a debugger."""
    real_stderr = sys.__stderr__
    # Without a real stderr (embedded, or captured in a test) there is nowhere to dump to.
    with contextlib.suppress(ValueError, OSError):
        if real_stderr is not None:
            faulthandler.register(signal.SIGUSR1, file=real_stderr, all_threads=True)
