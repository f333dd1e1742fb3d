"""Opt-outs followed live from the operator's WatchOptOuts stream.

`OptOutSet` holds opted-out raw UID2s in memory (reads take no lock) and says whether it is
`loaded`: the operator's whole backlog has arrived once. `OptOutWatcher` keeps a stream open: on
a break it reconnects with capped, jittered backoff and resumes `RESUME_MARGIN_MS` before the
last `opted_out_at` it saw (repeats are idempotent)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import structlog

from svc_common.backoff import Backoff
from svc_common.errors import failure_fields
from svc_common.failure_streak import FailureStreak

_log = structlog.get_logger("optouts")

# Opt-outs reach a stream in the order that operator learnt of them, not strictly by time: one
# recorded by another operator process arrives up to its sync interval (at most 1 s) after
# later-stamped ones (measured: 5-7 ms apart at 0.1 s). Resuming this far back re-reads a few
# seconds instead of missing any; far more would stall a watcher whose stream keeps breaking
# before it has replayed the margin (seen with 10 s and a break every 0.3 s).
RESUME_MARGIN_MS = 3_000

# A working operator answers a new stream at once (its first opt-out, or the backlog mark when it
# has none). One that has not after this long is frozen, or the network drops packets: the call
# only fails once keepalive gives the connection up, some 30 s on, and a watcher whose stream
# ended at a connection's age (logged at info) would only warn then.
FIRST_ANSWER_S = 5.0

# An operator that refused our key (disabled, unknown, or without ID_READER), or our stream
# (its per-client or per-process cap reached: RESOURCE_EXHAUSTED), refuses it again until
# someone fixes it or a stream ends: asked again this often, not at the outage backoff's pace
# (twice a second: 52 refused calls in 25 s from one misconfigured SSP).
REFUSED_RETRY_S = 10.0
_REFUSED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"})


class OperatorSilent(TimeoutError):
    """A stream opened, and the operator has sent nothing within FIRST_ANSWER_S."""


class OptOutSet:
    def __init__(self) -> None:
        self._at: dict[str, int] = {}
        self._lock = threading.Lock()
        self.last_seen_ms = 0
        self.loaded = threading.Event()

    def add(self, raw_uid: str, opted_out_at_ms: int) -> None:
        with self._lock:
            prev = self._at.get(raw_uid)
            if prev is None or opted_out_at_ms < prev:
                self._at[raw_uid] = opted_out_at_ms
            self.last_seen_ms = max(self.last_seen_ms, opted_out_at_ms)

    def opted_out(self, raw_uid: str) -> bool:
        return raw_uid in self._at

    def __len__(self) -> int:
        return len(self._at)


class OptOutStream(Protocol):
    """An open WatchOptOuts call: yields (raw_uid, opted_out_at_ms), and None once the backlog
    is out; `cancel` ends it."""

    def __iter__(self) -> Iterator[tuple[str, int] | None]: ...

    def cancel(self) -> None: ...


OpenStream = Callable[[int], OptOutStream]


class OptOutWatcher:
    def __init__(
        self,
        open_stream: OpenStream,
        optouts: OptOutSet,
        *,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        first_answer_s: float = FIRST_ANSWER_S,
        refused_retry_s: float = REFUSED_RETRY_S,
    ) -> None:
        self._open = open_stream
        self._first_answer_s = first_answer_s
        self._refused_retry_s = refused_retry_s
        self._optouts = optouts
        self._backoff = backoff or Backoff(base_s=0.1, cap_s=1.0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: OptOutStream | None = None
        self._thread = threading.Thread(target=self._run, name="optout-watch", daemon=True)
        self.connects = 0
        self.connected = threading.Event()
        # While the operator is down the stream breaks every second or sooner: one line per 30 s.
        self._breaks = FailureStreak(
            _log, "optout_stream_broken", "optout_stream_restored", monotonic=monotonic
        )
        # The streak is also told from the first-answer timer's thread.
        self._breaks_lock = threading.Lock()

    def start(self) -> OptOutWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._current is not None:
                self._current.cancel()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            refused = False
            silent = threading.Timer(self._first_answer_s, self._no_answer)
            silent.daemon = True
            silent.start()
            try:
                seen = self._optouts.last_seen_ms
                stream = self._open(max(0, seen - RESUME_MARGIN_MS) if seen else 0)
                with self._lock:
                    self._current = stream
                if self._stop.is_set():
                    stream.cancel()
                    return
                self.connects += 1
                for item in stream:
                    if not self.connected.is_set():
                        # Connected once the operator answers, not once the call is made: a
                        # frozen operator's kernel still accepts the connection, and nothing
                        # comes.
                        self._answered()
                        attempt = 0
                    if item is None:  # the backlog is in: the set is complete from now on
                        if not self._optouts.loaded.is_set():
                            self._optouts.loaded.set()
                            _log.info("optouts_loaded", optouts=len(self._optouts))
                        continue
                    self._optouts.add(*item)
                # The operator ended the stream (draining): reconnect.
            except Exception as exc:  # the operator unreachable, or the stream broke
                if self._stop.is_set():
                    return
                failure = failure_fields(exc)
                refused = failure.get("code") in _REFUSED
                # Still set here (`finally` clears it): the stream had delivered.
                if self.connected.is_set() and failure.get("code") == "UNAVAILABLE":
                    # A stream that was up ends so at every connection's age (10 min, the
                    # operator's GOAWAY) as well as when the operator goes: only a reconnect
                    # that fails, or that the operator leaves unanswered for FIRST_ANSWER_S,
                    # says which, so only that counts. Else the warning, which
                    # README says to alert on, fired every 10 minutes per decryptor. Any
                    # other end (a key disabled, a bug) is a failure at once.
                    _log.info("optout_stream_ended", **failure)
                else:
                    with self._breaks_lock:
                        self._breaks.failed(exc)
            finally:
                silent.cancel()
                self.connected.clear()
                with self._lock:
                    self._current = None
            self._stop.wait(self._refused_retry_s if refused else self._backoff.delay(attempt))
            attempt += 1

    def _answered(self) -> None:
        with self._breaks_lock:
            self.connected.set()
            self._breaks.succeeded()

    def _no_answer(self) -> None:
        # Under the lock, so that an answer arriving now is either seen here or restores after.
        with self._breaks_lock:
            if not self.connected.is_set() and not self._stop.is_set():
                self._breaks.failed(OperatorSilent())
