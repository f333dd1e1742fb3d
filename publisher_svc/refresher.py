"""Background refresh: keeps stored identities fresh so GetAdvertisingToken is a lookup.

Only for users who come back: an identity the background refreshed and nobody used since is
not refreshed again (it rests, `store.rest`) until the user returns (`store.mark_used`), and
its chain ends at its refresh_expires, as a UID2 identity whose user went away does. Refreshing
it forever would keep a departed user's identity alive and cost one operator call per stored
user per refresh interval, however many users left long ago.

A thread polls the store for identities whose next attempt is due (indexed column), and
refreshes them on a bounded worker pool with the same rules as GetAdvertisingToken. When the
operator is unreachable the identity keeps its still-valid token and its next attempt is pushed
back with capped exponential backoff and jitter; the schedule lives in SQLite, so a restart
carries on where it stopped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import structlog

from publisher_svc.limits import OPERATOR_BUSY
from publisher_svc.publisher import Publisher
from publisher_svc.refresh_policy import Decision, decide
from publisher_svc.results import StepKind
from publisher_svc.store import StoredIdentity
from svc_common.backoff import Backoff
from svc_common.clock import Monotonic, SystemClock
from svc_common.errors import ServiceError
from svc_common.sqlite_db import StoreUnavailable, StoreWriteFailed

_log = structlog.get_logger("refresher")

# How long a stop waits for a pass in progress. Not the operator's deadline: a pass waiting on a
# frozen operator would hold the exit that long (--operator-timeout may be minutes). A refresh cut
# short loses nothing: the stored identity is unchanged, its refresh token still valid, and it is
# due again at the next start.
STOP_WAIT_S = 1.0


@dataclass
class RefresherStats:
    refreshed: int = 0
    optouts: int = 0
    login_required: int = 0
    deferred: int = 0  # operator unreachable or refused: tried again later
    rested: int = 0  # unused since its last background refresh: not refreshed again for now
    skipped: int = 0  # no longer due or gone by the time a worker got to it
    in_flight: int = 0
    peak_in_flight: int = 0
    passes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self, outcome: str) -> None:
        with self._lock:
            self.in_flight -= 1
            setattr(self, outcome, getattr(self, outcome) + 1)


class Refresher:
    def __init__(
        self,
        publisher: Publisher,
        *,
        workers: int = 8,
        poll_interval_s: float = 1.0,
        batch_size: int = 512,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
        circuit_open_s: float = 1.0,
        store_pause_s: float = 10.0,
        monotonic: Monotonic | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.publisher = publisher
        self.workers = workers
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        # Per-identity retry schedule after UNAVAILABLE: 1 s, 2 s, 4 s ... up to 60 s, jittered.
        self.backoff = backoff or Backoff(base_s=1.0, cap_s=60.0)
        # While the operator is known to be unreachable, the rest of a pass is deferred
        # without calling it (a circuit breaker), for `circuit_open_s` on the `monotonic`
        # clock (the system's unless a test passes a hand-moved one).
        self.circuit_open_s = circuit_open_s
        self._monotonic: Monotonic = SystemClock() if monotonic is None else monotonic
        self._circuit_until = 0.0
        # Refreshes in a row that found the operator unreachable (0 once it answers), from
        # every worker: under its own lock.
        self._operator_failures = 0
        self._operator_failures_lock = threading.Lock()
        # While the store refuses writes (a full disk), every refresh would be thrown away
        # after costing the operator a call: passes are skipped for `store_pause_s`.
        self.store_pause_s = store_pause_s
        self._store_paused_until = 0.0
        self.stats = RefresherStats()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refresh")
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refresher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = STOP_WAIT_S) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.run_once()
            except Exception as exc:  # keep refreshing whatever one pass hit
                _log.error("refresh_pass_failed", error_type=type(exc).__name__)
                n = 0
            if n >= self.batch_size:
                continue  # more are due: go straight on
            self._pause(self.poll_interval_s)

    def _pause(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
            return
        self._wake.wait(seconds)
        self._wake.clear()

    # -- one pass -------------------------------------------------------------------------

    def run_once(self) -> int:
        """Refreshes every identity due now (up to one batch); returns how many were taken."""
        if self._store_paused():
            return 0
        if len(self.publisher.unrecorded_optouts):
            try:
                self.publisher.record_unrecorded_optouts()
            except StoreUnavailable as err:
                # Still refused: so would this pass's refreshes be. Their users' opt-outs wait
                # in memory, honoured, for the next pass.
                self._store_refused(err)
                _log.info("unrecorded_optouts_deferred", reason=err.reason)
                return 0
        now = self.publisher.clock.now_ms()
        due = self.publisher.store.due(now, self.batch_size)
        if not due:
            return 0
        started = time.perf_counter()
        futures = [self._pool.submit(self.refresh_one, d.user_id) for d in due]
        wait(futures)
        self.stats.passes += 1
        _log.info(
            "refresh_pass",
            due=len(due),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            refreshed=self.stats.refreshed,
            deferred=self.stats.deferred,
        )
        return len(due)

    def refresh_one(self, user_id: str) -> str:
        """Refreshes one stored identity if it is still due; returns the outcome's name."""
        self.stats.enter()
        outcome = "skipped"
        try:
            if self._store_paused():
                outcome = "deferred"
            elif not self._stop.is_set():
                outcome = self._refresh(user_id)
        except StoreUnavailable as err:
            # Another process holds the store, or the disk refuses writes: the identity is
            # unchanged and the next pass finds it due again. Recording a deferral would be a
            # second write that fails the same way.
            self._store_refused(err)
            _log.info("refresh_deferred", reason=err.reason)
            outcome = "deferred"
        except Exception as exc:
            if self._stop.is_set():
                # Outlived the stop (pools are shut down without waiting): the store or the
                # operator channel may be closed under it. Not a failure worth an error line.
                _log.info("refresh_abandoned", reason="STOPPING", error_type=type(exc).__name__)
            else:
                _log.error("refresh_failed", error_type=type(exc).__name__)
            outcome = "deferred"
        finally:
            self.stats.leave(outcome)
        return outcome

    def _refresh(self, user_id: str) -> str:
        pub = self.publisher
        with pub.user_lock(user_id):
            stored = pub.store.get(user_id)
            now = pub.clock.now_ms()
            if stored is None:
                return "skipped"
            if (
                not stored.used_since_refresh
                and decide(stored.identity, now) is Decision.REFRESH
                and pub.store.rest(user_id, stored.identity.refresh_token)
            ):
                return "rested"
            if self._monotonic.monotonic_s() < self._circuit_until:
                self._defer(user_id, stored, now)
                return "deferred"
            try:
                step, _ = pub.refresh_stored(user_id, by_user=False)
            except StoreUnavailable:
                raise  # not the operator's refusal: refresh_one's
            except ServiceError as err:
                # Operator unreachable with the token already expired, or it refused the call:
                # keep the identity (refreshable until refresh_expires) and try again later.
                self._defer(user_id, stored, now)
                if err.reason == "OPERATOR_UNAVAILABLE":
                    self._open_circuit()
                elif err.reason != OPERATOR_BUSY:  # refused: the operator answered
                    self._operator_answered()
                _log.info("refresh_deferred", reason=err.reason)
                return "deferred"
            if step.kind is StepKind.USE:
                return "skipped"
            if step.kind is StepKind.STALE:
                self._defer(user_id, stored, now)
                self._open_circuit()
                return "deferred"
            self._operator_answered()
            if step.kind is StepKind.REFRESHED:
                return "refreshed"
            if step.kind is StepKind.OPTOUT:
                return "optouts"
            return "login_required"

    def readings(self) -> dict[str, float]:
        """What /metrics shows of the refresher (svc_common.metrics): whether it is holding
        back, and why. No store access: a scrape must not take the store's lock."""
        now_s = self._monotonic.monotonic_s()
        return {
            "refresh_paused_by_store": 1.0 if now_s < self._store_paused_until else 0.0,
            "refresh_circuit_open": 1.0 if now_s < self._circuit_until else 0.0,
            # Open for a second at a time, between passes that back off: a scrape seldom
            # catches it. This stays up for the whole outage (on-call review).
            "refresh_operator_failures": float(self._operator_failures),
            "refresh_in_flight": float(self.stats.in_flight),
        }

    def _store_paused(self) -> bool:
        return self._monotonic.monotonic_s() < self._store_paused_until

    def _store_refused(self, err: StoreUnavailable) -> None:
        if err.reason != StoreWriteFailed.REASON:
            return  # a busy store is another process's write: over in seconds by itself
        now_s = self._monotonic.monotonic_s()
        if now_s >= self._store_paused_until:
            _log.warning("refresh_paused", reason=err.reason, retry_in_s=self.store_pause_s)
        self._store_paused_until = now_s + self.store_pause_s

    def _operator_answered(self) -> None:
        with self._operator_failures_lock:
            self._operator_failures = 0

    def _open_circuit(self) -> None:
        now_s = self._monotonic.monotonic_s()
        with self._operator_failures_lock:
            self._operator_failures += 1
            failures = self._operator_failures
        if now_s >= self._circuit_until:
            _log.warning(
                "operator_unavailable", retry_in_s=self.circuit_open_s, failures_in_a_row=failures
            )
        self._circuit_until = now_s + self.circuit_open_s

    def _defer(self, user_id: str, stored: StoredIdentity, now: int) -> None:
        try:
            self.publisher.postpone_refresh(user_id, stored, now, self.backoff)
        except StoreUnavailable as err:
            # Not recorded: the identity stays due and the next poll tries again. Raising would
            # skip opening the circuit (the operator is then called for every identity) and
            # log the pass as an error.
            self._store_refused(err)
            _log.info("refresh_postpone_skipped", reason=err.reason)
