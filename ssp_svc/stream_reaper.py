"""Ends bid streams whose key was disabled while their reader has stopped reading.

A bid stream checks its own key between messages and ends UNAUTHENTICATED once it is disabled.
One whose reader stopped reading never gets there: its server thread waits inside gRPC to send
the next message, keeping its slot and its thread for as long as the reader holds the
connection open (it may answer pings forever). The reaper looks at every open stream's key from
a thread of its own and cancels the call of one whose key has been refused at STRIKES checks in
a row: by then a stream that reads has ended by itself, with its UNAUTHENTICATED. The thread
runs only while streams are open."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

# Checks in a row that refused a stream's key before its call is cancelled: the stream's own
# check (every RECHECK_KEY_S, between messages) ends one that reads well before the third.
STRIKES = 3

_log = structlog.get_logger("ssp")


class _Watched:
    __slots__ = ("api_key", "context", "strikes")

    def __init__(self, api_key: str, context: Any) -> None:
        self.api_key = api_key
        self.context = context
        self.strikes = 0


class StreamReaper:
    def __init__(self, key_valid: Callable[[str], bool], interval_s: float) -> None:
        self._key_valid = key_valid
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}  # by id(): each is watched once
        self._thread: threading.Thread | None = None  # runs only while streams are open

    def watch(self, api_key: str, context: Any) -> None:
        """Watches one open stream until its call ends, however it ends: the watch goes with the
        call (a callback on it), not with the method that serves it, which may have returned
        while its last message still waits to be sent (on grpc.aio a worker thread runs the
        method ahead of the writes, and a disabled key ends it there)."""
        watched = _Watched(api_key, context)
        with self._lock:
            self._watched[id(watched)] = watched
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stream-reaper", daemon=True)
                self._thread.start()

        def unwatch() -> None:
            with self._lock:
                self._watched.pop(id(watched), None)

        # A call already over (cancelled as it opened) runs no callback added to it.
        if not context.add_callback(unwatch):
            unwatch()

    def check(self) -> int:
        """One look at every watched stream; how many it cancelled."""
        with self._lock:
            watched = list(self._watched.values())
        cancelled = 0
        for w in watched:
            if self._key_valid(w.api_key):
                w.strikes = 0
                continue
            w.strikes += 1
            if w.strikes >= STRIKES:
                w.context.cancel()
                cancelled += 1
        return cancelled

    def _run(self) -> None:
        while True:
            time.sleep(self._interval_s)
            with self._lock:
                if not self._watched:
                    self._thread = None
                    return
            try:
                self.check()
            except Exception as exc:  # a store gone (a stop): the next check tries again
                _log.info("stream_reaper_check_failed", error_type=type(exc).__name__)
