"""FailureStreak: a recurring job's failures are logged at once, then at most once per interval
with the count, and once more when the job works again."""

from __future__ import annotations

import grpc
import structlog
from structlog.testing import capture_logs

from svc_common.failure_streak import FailureStreak
from svc_common.grpc_client import RemoteError


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_failure_then_one_line_per_interval_then_recovery() -> None:
    clock = _Clock()
    streak = FailureStreak(
        structlog.get_logger("t"), "broken", "restored", every_s=30.0, monotonic=clock
    )
    down = RemoteError(grpc.StatusCode.UNAVAILABLE, "", "connection refused")
    with capture_logs() as logs:
        for _ in range(60):  # a minute of one retry a second
            streak.failed(down)
            clock.now += 1.0
        streak.succeeded()
        streak.succeeded()  # nothing more: the streak is over
    assert [(e["event"], e["failures"]) for e in logs] == [
        ("broken", 1),
        ("broken", 31),
        ("restored", 60),
    ]
    assert logs[0]["code"] == "UNAVAILABLE" and "connection refused" not in repr(logs)


def test_a_new_streak_logs_its_first_failure_again() -> None:
    clock = _Clock()
    streak = FailureStreak(structlog.get_logger("t"), "broken", "restored", monotonic=clock)
    with capture_logs() as logs:
        streak.failed(ConnectionError())
        streak.succeeded()
        clock.now += 1.0
        streak.failed(ConnectionError())
    assert [(e["event"], e["failures"]) for e in logs] == [
        ("broken", 1),
        ("restored", 1),
        ("broken", 1),
    ]
