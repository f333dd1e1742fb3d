"""Fixtures of the whole suite."""

from __future__ import annotations

import faulthandler
import signal
from collections.abc import Iterator

import pytest

from svc_common import logging as svc_logging
from svc_common import sqlite_db

# See CACHE_LOGGERS: which tests ran before decided whether a capture_logs() saw a line.
svc_logging.CACHE_LOGGERS = False


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    """The SIGINT/SIGTERM/SIGHUP handlers (and faulthandler's SIGUSR1) as they were before the
    test: an in-process `serve` that fails after catch_stop_signals (a bad publishers file) left
    its handlers to every later test, and the signal tests then failed by test order alone."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    faulthandler.unregister(signal.SIGUSR1)


@pytest.fixture(autouse=True)
def forget_abandoned_stores() -> Iterator[None]:
    """A test that loses a store on purpose leaves its connection in sqlite_db's abandoned list,
    which makes run_console end the process at once (os._exit): a later test calling
    run_console in-process would end the whole pytest run. The connection is forgotten after
    the test instead (closed by the garbage collector, on files of the test's own tmp dir)."""
    yield
    sqlite_db._abandoned.clear()  # the module's own list: no API outside tests needs this
