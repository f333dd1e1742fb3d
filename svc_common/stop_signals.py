"""Stop signals for `serve`. SIGINT and SIGTERM must drain the service and exit 0 whenever they
arrive, even while it is still starting: `run_console` catches them before a console script's
heavy imports (grpc, cryptography: ~0.15 s), `catch_stop_signals` takes over before start-up,
and `wait_for_signal` waits for one. Light on purpose: only the standard library."""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

# How often a waiting main thread wakes to run Python's signal handlers (see wait_for_signal).
_SIGNAL_POLL_S = 0.2
# Once `serve` has drained and cleaned up, how long the interpreter's own exit may take. It joins
# every worker thread (grpc's pool, the services' pools), and a handler past the drain's grace
# (a bidder's delay, a write waiting on another process's SQLite lock) would keep a process
# that already logged `stopped` alive for as long as that handler runs.
EXIT_AFTER_STOP_S = 2.0


class StopRequested(Protocol):
    """What start-up code polls to give up early: a StopEvent, or a threading.Event in tests."""

    def is_set(self) -> bool: ...


class StopEvent:
    """Set by SIGINT or SIGTERM (`record`, the handler) or by code (`set`); `signal_name` says
    which signal came first.

    Why not a threading.Event: a handler runs in the main thread between two bytecodes, which
    may be inside that thread's own `Event.wait()` while it holds the event's lock; `set()` from
    the handler then waits for that lock forever (seen in a stress run). Setting a plain
    attribute takes no lock. No I/O in the handler either: inside an interrupted write to
    stderr, writing to it again raises "reentrant call" into that code; `wait_for_signal` logs."""

    def __init__(self) -> None:
        self._set = False
        self.signal_name: str | None = None
        # SIGHUPs received: counted, not obeyed (catch_stop_signals says why).
        self.hangups = 0

    def record_hangup(self, _signum: int, _frame: Any = None) -> None:
        self.hangups += 1

    def record(self, signum: int, _frame: Any = None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self._set = True

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once set; False if `timeout_s` passes first. Polls in short sleeps, which also
        lets the main thread run the handler of a signal another thread received."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._set:
            left = _SIGNAL_POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_SIGNAL_POLL_S, left))
        return True


# Set by the early handlers `run_console` installs, until `catch_stop_signals` replaces them.
_early_stop = StopEvent()


class StoppedBySignal(Exception):
    """Raised into an admin command by SIGTERM or SIGHUP (SIGINT raises KeyboardInterrupt)."""


def _raise_stopped(signum: int, _frame: Any = None) -> None:
    raise StoppedBySignal(signal.Signals(signum).name)


def run_console(cli_module: str) -> int:
    """A console script's entry: for `serve`, stop signals are caught from here on; then the
    service's CLI (`cli_module`.main) is imported and run. Any other command stopped by a
    signal says so in one line and exits 2, like its other errors, not with a traceback (a
    Ctrl-C during the imports) or a bare signal death: what it writes is one transaction,
    rolled back when the exception unwinds it."""
    # Before grpc is imported, which reads it once: its default also writes an INFO line, not
    # JSON, for every failed TLS handshake (a port scan: one per connection). Its own errors
    # still come; an operator's GRPC_VERBOSITY wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        rc = _run_console(cli_module)
    except BaseException:
        if _abandoned_stores():
            traceback.print_exc()
            _end_now(2)
        raise
    if _abandoned_stores():
        _end_now(rc)
    return rc


def _run_console(cli_module: str) -> int:
    if sys.argv[1:2] == ["serve"]:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _early_stop.record)
        signal.signal(signal.SIGHUP, _early_stop.record_hangup)
        _dump_stacks_on_usr1()
        rc = int(importlib.import_module(cli_module).main())
        _exit_anyway_after(EXIT_AFTER_STOP_S, rc)
        return rc
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    try:
        return int(importlib.import_module(cli_module).main())
    except KeyboardInterrupt:
        stopped_by = "SIGINT"
    except StoppedBySignal as exc:
        stopped_by = str(exc)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else cli_module
    print(f"{prog}: error: stopped by {stopped_by} before it finished", file=sys.stderr)
    return 2


def close_despite_stop(close: Callable[[], None]) -> None:
    """Runs an admin command's `close` of its store, once its work is done (committed, or
    failed and rolled back): a stop signal landing meanwhile (Ctrl-C; SIGTERM or SIGHUP,
    raised by `run_console`) is not the command's failure, and was reported as one ("stopped
    before it finished", exit 2, after a key was saved). The process ends anyway."""
    with contextlib.suppress(KeyboardInterrupt, StoppedBySignal):
        close()


def _abandoned_stores() -> bool:
    """Whether the command left a lost store's connection open (sqlite_db.close_when_free): the
    interpreter's exit would close it, and SQLite's close would checkpoint into, and remove the
    WAL file of, a store it no longer owns. The process then ends at once (`_end_now`), serve
    or admin command, whether it returned or raised."""
    sqlite_db = sys.modules.get("svc_common.sqlite_db")
    return sqlite_db is not None and bool(sqlite_db.abandoned_stores())


def _end_now(rc: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(rc)


def _exit_anyway_after(delay_s: float, rc: int) -> None:
    """Lets the interpreter exit as usual, but ends the process with `rc` after `delay_s` if
    that exit is still waiting on a thread (daemon: it never holds the exit up itself)."""

    def force() -> None:
        time.sleep(delay_s)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()
        os._exit(rc)

    threading.Thread(target=force, name="exit-watchdog", daemon=True).start()


def catch_stop_signals() -> StopEvent:
    """From now on SIGINT and SIGTERM set the returned event instead of killing the process.
    Called first thing in `serve`, so a stop during start-up still drains and exits 0."""
    stop = StopEvent()
    _dump_stacks_on_usr1()
    signal.signal(signal.SIGINT, stop.record)
    signal.signal(signal.SIGTERM, stop.record)
    # SIGHUP neither stops nor reloads: by default it killed a service without a drain (exit
    # 129), when a terminal closed or a supervisor sent its "reload" (s6's svc -h, systemd's
    # ExecReload). There is nothing to reload: certificates reload on their own, and settings
    # are read once. `wait_for_signal` logs each one.
    stop.hangups = _early_stop.hangups  # first: one arriving after the swap is counted on top
    signal.signal(signal.SIGHUP, stop.record_hangup)
    # Only now, with the new handlers in place: a stop that came while the service was still
    # importing. Looked at earlier, one arriving in between would have been lost.
    if _early_stop.is_set():
        stop.signal_name = _early_stop.signal_name
        stop.set()
    return stop


def wait_for_signal(stop: StopEvent | None = None) -> None:
    """Blocks the main thread until SIGINT or SIGTERM (or until `stop`, from
    `catch_stop_signals`, is set), then logs which; logs `signal_ignored` for SIGHUPs meanwhile.

    Why short sleeps, not one long wait: the kernel may deliver a process's SIGTERM to any thread
    that does not block it (grpc's, the refresher's, a pool's). Python then only flags it, and
    runs the handler when the main thread next executes bytecode; an untimed wait is never woken,
    so the service ignored the stop (seen: a publisher still serving 15 s after SIGTERM in a
    loaded test run)."""
    event = stop or catch_stop_signals()
    import structlog  # the entry imports nothing heavy before its handlers

    log = structlog.get_logger("server")
    logged_hangups = 0
    while not event.wait(_SIGNAL_POLL_S):
        if event.hangups != logged_hangups:
            logged_hangups = event.hangups
            log.warning("signal_ignored", signal="SIGHUP", received=logged_hangups)
    if event.signal_name is None:
        log.info("stop_requested")
    else:
        log.info("signal_received", signal=event.signal_name)


def _dump_stacks_on_usr1() -> None:
    """`kill -USR1 <pid>` writes every thread's stack to stderr: how to see where a service that
    will not stop (or answer) is stuck, without a debugger."""
    real_stderr = sys.__stderr__
    # Without a real stderr (embedded, or captured in a test) there is nowhere to dump to.
    with contextlib.suppress(ValueError, OSError):
        if real_stderr is not None:
            faulthandler.register(signal.SIGUSR1, file=real_stderr, all_threads=True)
