"""The demo's Ctrl-C during the walk is a flag checked between calls, and its unary calls carry a
default deadline, so a check is never far off (demo/__main__.py, demo/stack.py)."""

from __future__ import annotations

import signal
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

import demo.__main__ as demo_main
from demo.stack import UNARY_DEADLINE_S, Stack, _DefaultDeadline
from svc_common.stop_signals import StopEvent

Details = namedtuple(
    "Details", "method timeout metadata credentials wait_for_ready compression"
)  # the fields of grpc.ClientCallDetails


def test_the_handler_only_sets_the_flag_and_the_next_check_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interrupts = StopEvent()
    monkeypatch.setattr(demo_main, "INTERRUPTS", interrupts)
    interrupts.record(signal.SIGINT, None)  # no KeyboardInterrupt from the handler itself
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        demo_main.pause(30)
    assert time.monotonic() - began < 1.0


def test_pause_runs_its_time_without_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_main, "INTERRUPTS", StopEvent())
    began = time.monotonic()
    demo_main.pause(0.2)
    assert time.monotonic() - began >= 0.2


def test_unary_calls_get_the_default_deadline_unless_they_set_one() -> None:
    seen: list[Any] = []

    def continuation(details: Any, request: Any) -> None:
        seen.append(details.timeout)

    interceptor = _DefaultDeadline(UNARY_DEADLINE_S)
    interceptor.intercept_unary_unary(continuation, Details("/m", None, None, None, None, None), 1)
    interceptor.intercept_unary_unary(continuation, Details("/m", 2.5, None, None, None, None), 1)
    assert seen == [UNARY_DEADLINE_S, 2.5]


class _Stubborn:
    """A service process that ignored SIGTERM: terminate() kills it and says so."""

    def terminate(self) -> int:
        raise RuntimeError("uid2-ssp did not stop within 15.0 s of SIGTERM; stacks: ...")


class _Obedient:
    def terminate(self) -> int:
        return 0


def test_a_service_killed_at_stop_is_reported_with_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = Stack(tmp_path)
    stack.procs.update({"ssp": _Stubborn(), "publisher": _Obedient()})  # type: ignore[dict-item]  # fakes with terminate() only
    codes = stack.stop_all()
    assert codes == {"publisher": 0, "ssp": None}  # the others are still stopped
    demo_main._report_stop_failures(stack)
    err = capsys.readouterr().err
    assert "ssp did not stop cleanly (killed): uid2-ssp did not stop within 15.0 s" in err
    assert "publisher" not in err
