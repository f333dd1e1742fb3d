from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from structlog.testing import capture_logs

from bidstream.decryptor.optouts import RESUME_MARGIN_MS, OptOutSet, OptOutWatcher
from svc_common.backoff import Backoff
from svc_common.grpc_client import RemoteError
from tests.support.procs import wait_until


class Ended(Exception):
    """How the operator's side ends a stream that was up (its GOAWAY at the connection's age,
    or its going away), as failure_fields reads a gRPC error."""

    def __init__(self, code: str = "UNAVAILABLE") -> None:
        super().__init__(code)
        self.code = code


class FakeStream:
    def __init__(
        self,
        items: list[tuple[str, int] | None],
        fail_after: bool,
        error: Exception | None = None,
    ) -> None:
        self.items = items
        self.fail_after = fail_after
        self.error = error or ConnectionError("stream broke")
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[tuple[str, int] | None]:
        yield from self.items
        if self.fail_after:
            raise self.error
        self.cancelled.wait(5)

    def cancel(self) -> None:
        self.cancelled.set()


T = 1_800_000_000_000  # epoch ms


def test_reconnects_with_backoff_and_resumes_a_margin_before_the_last_seen() -> None:
    opened: list[int] = []
    script: list[tuple[list[tuple[str, int] | None], bool]] = [
        ([("u1", T + 100), ("u2", T + 200)], True),  # breaks before the backlog is out
        ([], True),  # connects, breaks at once
        ([("u2", T + 200), None, ("u3", T + 300)], False),  # repeats are idempotent
    ]

    def open_stream(since: int) -> FakeStream:
        opened.append(since)
        if len(opened) == 2:
            raise ConnectionError("operator down")
        items, fail = script[min(len(opened) - 1, 2)] if len(opened) != 3 else script[1]
        return FakeStream(items, fail)

    optouts = OptOutSet()
    watcher = OptOutWatcher(open_stream, optouts, backoff=Backoff(base_s=0.01, cap_s=0.02))
    watcher.start()
    try:
        assert wait_until(lambda: optouts.opted_out("u3"), 5)
    finally:
        watcher.stop()
    assert opened[0] == 0
    # An opt-out another operator process recorded just before T + 200 may still be on its way.
    assert all(since == T + 200 - RESUME_MARGIN_MS for since in opened[1:])
    assert len(optouts) == 3 and optouts.last_seen_ms == T + 300
    assert optouts.opted_out("u1") and not optouts.opted_out("nobody")
    assert optouts.loaded.is_set()


def test_loaded_only_once_the_backlog_mark_arrives() -> None:
    stream = FakeStream([("u1", T)], fail_after=False)
    optouts = OptOutSet()
    watcher = OptOutWatcher(lambda since: stream, optouts).start()
    try:
        assert wait_until(lambda: optouts.opted_out("u1"), 2)
        assert not optouts.loaded.wait(0.2)
    finally:
        watcher.stop()
    marked = FakeStream([("u1", T), None], fail_after=False)
    optouts = OptOutSet()
    watcher = OptOutWatcher(lambda since: marked, optouts).start()
    try:
        assert optouts.loaded.wait(2)
    finally:
        watcher.stop()


def test_stop_cancels_an_open_stream() -> None:
    stream = FakeStream([("u1", 1)], fail_after=False)
    watcher = OptOutWatcher(lambda since: stream, OptOutSet()).start()
    assert wait_until(lambda: watcher.connected.is_set(), 2)
    watcher.stop()
    assert stream.cancelled.is_set()


def test_earliest_opt_out_time_is_kept() -> None:
    s = OptOutSet()
    s.add("u", 500)
    s.add("u", 300)
    # The resume point never moves back for a late-arriving, earlier-stamped opt-out.
    assert s.last_seen_ms == 500
    s.add("u", 900)
    assert s.opted_out("u") and s.last_seen_ms == 900


def test_a_down_operator_is_logged_once_and_its_return_once() -> None:
    # The stream retries about once a second while the operator is down; the log must not.
    opened: list[int] = []

    def open_stream(since: int) -> FakeStream:
        opened.append(since)
        if len(opened) <= 5:
            raise ConnectionError("operator down")
        return FakeStream([None], False)

    optouts = OptOutSet()
    watcher = OptOutWatcher(open_stream, optouts, backoff=Backoff(base_s=0.001, cap_s=0.002))
    with capture_logs() as logs:
        watcher.start()
        try:
            assert wait_until(optouts.loaded.is_set, 5)
        finally:
            watcher.stop()
    streak = [(e["event"], e.get("failures")) for e in logs if "stream" in e["event"]]
    assert streak == [("optout_stream_broken", 1), ("optout_stream_restored", 5)]


class RecordingBackoff(Backoff):
    def __init__(self) -> None:
        super().__init__(base_s=0.001, cap_s=0.002)
        self.attempts: list[int] = []

    def delay(self, attempt: int) -> float:
        self.attempts.append(attempt)
        return super().delay(attempt)


def test_a_stream_that_delivered_restarts_the_backoff() -> None:
    # Two failed connects, then a stream that delivers and breaks: the next wait is a first one.
    opened: list[int] = []

    def open_stream(since: int) -> FakeStream:
        opened.append(since)
        if len(opened) in (1, 2):
            raise ConnectionError("operator down")
        if len(opened) == 3:
            return FakeStream([("u1", T), None], True)
        return FakeStream([("u2", T + 1)], False)

    optouts = OptOutSet()
    backoff = RecordingBackoff()
    watcher = OptOutWatcher(open_stream, optouts, backoff=backoff).start()
    try:
        assert wait_until(lambda: optouts.opted_out("u2"), 5)
    finally:
        watcher.stop()
    assert backoff.attempts[:3] == [0, 1, 0]


def test_connected_only_once_the_operator_answers() -> None:
    # A frozen operator's kernel still accepts the connection; the call opens, nothing comes.
    silent = FakeStream([], fail_after=False)
    watcher = OptOutWatcher(lambda since: silent, OptOutSet()).start()
    try:
        assert wait_until(lambda: watcher.connects == 1, 2)
        assert not watcher.connected.wait(0.2)
    finally:
        watcher.stop()
    answering = FakeStream([None], fail_after=False)
    watcher = OptOutWatcher(lambda since: answering, OptOutSet()).start()
    try:
        assert watcher.connected.wait(2)
    finally:
        watcher.stop()


def _stream_lines(script: list[FakeStream | None], until: str) -> list[str]:
    """Events of a watcher whose opens follow `script` (None: the operator down), once the
    opt-out `until` is in."""
    opened: list[int] = []

    def open_stream(since: int) -> FakeStream:
        opened.append(since)
        step = script[min(len(opened), len(script)) - 1]
        if step is None:
            raise ConnectionError("operator down")
        return step

    optouts = OptOutSet()
    # A refused key's slower retry (REFUSED_RETRY_S) is not what these tests look at.
    watcher = OptOutWatcher(
        open_stream, optouts, backoff=Backoff(base_s=0.001, cap_s=0.002), refused_retry_s=0.01
    )
    with capture_logs() as logs:
        watcher.start()
        try:
            assert wait_until(lambda: optouts.opted_out(until), 5)
        finally:
            watcher.stop()
    return [e["event"] for e in logs if "stream" in e["event"]]


def test_a_stream_that_was_up_and_ends_is_no_failure_when_the_reconnect_works() -> None:
    # What every connection's age (the operator's GOAWAY after 10 minutes) does to a stream.
    lines = _stream_lines(
        [
            FakeStream([("u1", T), None], fail_after=True, error=Ended()),
            FakeStream([("u2", T + 1)], fail_after=True, error=Ended()),
            FakeStream([("u3", T + 2)], fail_after=False),
        ],
        until="u3",
    )
    assert lines == ["optout_stream_ended", "optout_stream_ended"]


def test_a_stream_that_was_up_and_fails_otherwise_warns_at_once() -> None:
    # Its key disabled, say: each reconnect is answered, then ended (diff review: 11 times in
    # 6 s, each logged at info only).
    lines = _stream_lines(
        [
            FakeStream([("u1", T), None], fail_after=True, error=Ended("UNAUTHENTICATED")),
            FakeStream([("u2", T + 1)], fail_after=True, error=ValueError("a bug")),
            FakeStream([("u3", T + 2)], fail_after=False),
        ],
        until="u3",
    )
    assert lines == [
        "optout_stream_broken",
        "optout_stream_restored",
        "optout_stream_broken",
        "optout_stream_restored",
    ]


def test_a_stream_that_was_up_and_ends_warns_once_the_reconnect_fails() -> None:
    lines = _stream_lines(
        [
            FakeStream([("u1", T), None], fail_after=True, error=Ended()),
            # A reconnect to an operator that is gone: the call opens, and fails UNAVAILABLE
            # before anything comes (mutation review: no test had that shape).
            FakeStream([], fail_after=True, error=Ended()),
            None,
            FakeStream([("u2", T)], fail_after=False),
        ],
        until="u2",
    )
    assert lines == ["optout_stream_ended", "optout_stream_broken", "optout_stream_restored"]


class LateStream(FakeStream):
    """A call the operator answers only once `answer` is set (frozen until then)."""

    def __init__(self, items: list[tuple[str, int] | None], answer: threading.Event) -> None:
        super().__init__(items, fail_after=False)
        self.answer = answer

    def __iter__(self) -> Iterator[tuple[str, int] | None]:
        self.answer.wait(5)
        yield from super().__iter__()


def test_a_reconnect_left_unanswered_warns_before_keepalive_would_end_it() -> None:
    # The operator frozen or cut off by the network: the stream that was up ends UNAVAILABLE
    # (info, as at a connection's age), and the reconnect's call opens and hears nothing, for
    # some 30 s until keepalive gives it up. The warning comes at the first-answer bound.
    answer = threading.Event()
    opened: list[int] = []

    def open_stream(since: int) -> FakeStream:
        opened.append(since)
        if len(opened) == 1:
            return FakeStream([("u1", T), None], fail_after=True, error=Ended())
        return LateStream([("u2", T + 1)], answer)

    optouts = OptOutSet()
    watcher = OptOutWatcher(
        open_stream,
        optouts,
        backoff=Backoff(base_s=0.001, cap_s=0.002),
        first_answer_s=0.05,
    )
    with capture_logs() as logs:
        watcher.start()
        try:
            assert wait_until(lambda: any(e["event"] == "optout_stream_broken" for e in logs), 5)
            # Nothing cancelled: an operator slow to answer is not refused, and the watcher
            # does not reconnect in a loop while the silent call stays open.
            assert len(opened) == 2 and not watcher.connected.is_set()
            answer.set()
            assert wait_until(lambda: optouts.opted_out("u2"), 5)
        finally:
            answer.set()
            watcher.stop()
    assert [e["event"] for e in logs if "stream" in e["event"]] == [
        "optout_stream_ended",
        "optout_stream_broken",
        "optout_stream_restored",
    ]
    assert next(e for e in logs if e["event"] == "optout_stream_broken")["error_type"] == (
        "OperatorSilent"
    )


def test_an_answer_within_the_first_answer_bound_warns_nothing() -> None:
    answer = threading.Event()
    watcher = OptOutWatcher(
        lambda since: LateStream([("u1", T)], answer), OptOutSet(), first_answer_s=0.5
    )
    with capture_logs() as logs:
        watcher.start()
        try:
            time.sleep(0.1)
            answer.set()
            assert watcher.connected.wait(5)
            time.sleep(0.6)  # past the bound: its timer must not fire once answered
        finally:
            watcher.stop()
    assert not [e for e in logs if "stream" in e["event"]]


def test_not_connected_from_the_break_until_the_operator_answers_again() -> None:
    # What uid2_decryptor_optout_stream_connected shows: a dashboard must not read a broken
    # stream as up while the watcher waits to reconnect.
    reopening = threading.Event()
    release = threading.Event()
    opened: list[int] = []

    def open_stream(since: int) -> FakeStream:
        opened.append(since)
        if len(opened) == 1:
            return FakeStream([("u1", T), None], fail_after=True, error=Ended())
        reopening.set()
        release.wait(5)
        return FakeStream([("u2", T + 1)], fail_after=False)

    optouts = OptOutSet()
    watcher = OptOutWatcher(open_stream, optouts, backoff=Backoff(base_s=0.001, cap_s=0.002))
    watcher.start()
    try:
        assert reopening.wait(5)
        assert not watcher.connected.is_set()
        release.set()
        assert wait_until(watcher.connected.is_set, 5)
    finally:
        release.set()
        watcher.stop()


@pytest.mark.parametrize("refusal", ["PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"])
def test_an_operator_refusing_our_key_is_asked_again_seldom(refusal: str) -> None:
    """On-call review: a reader whose key was disabled, or lacked ID_READER, reopened its stream
    twice a second for as long as it ran (52 refused calls in 25 s); the diff review: so did the
    17th decryptor of a client, refused at the stream cap."""
    opened: list[str] = []

    def open_stream(since: int) -> FakeStream:
        code = refusal if len(opened) % 2 else "UNAVAILABLE"
        opened.append(code)
        raise RemoteError(getattr(grpc.StatusCode, code), "", "")

    watcher = OptOutWatcher(
        open_stream, OptOutSet(), backoff=Backoff(base_s=0.001, cap_s=0.002), refused_retry_s=0.5
    ).start()
    try:
        time.sleep(1.2)
    finally:
        watcher.stop()
    # Unavailable, refused (0.5 s), unavailable, refused (0.5 s), unavailable, refused: at most
    # 6 in 1.2 s, where the outage's 2 ms backoff alone would open hundreds.
    assert 3 <= len(opened) <= 6, opened
