"""A stop signal that arrives while a service is still starting is kept for when it is up."""

from __future__ import annotations

import faulthandler
import os
import signal
from collections.abc import Iterator

import pytest

from svc_common.stop_signals import catch_stop_signals, wait_for_signal


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    faulthandler.unregister(signal.SIGUSR1)


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
