"""Fixtures of the common unit tests."""

from __future__ import annotations

import faulthandler
import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    """The SIGINT/SIGTERM handlers (and faulthandler's SIGUSR1) as they were before the test:
    a test that runs catch_stop_signals must not leave them to the rest of the session."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    faulthandler.unregister(signal.SIGUSR1)
