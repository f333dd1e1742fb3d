"""The publisher's domain logic: login, token upkeep, logout, impressions (reference §1, §7).

Plain class: the store, the peers and the clock are constructor arguments; no gRPC. Errors
are ServiceError; business outcomes (opt-out, login required) are enum results."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import structlog

from publisher_svc.call_bound import CallBound
from publisher_svc.caller_deadline import callers_remaining_s
from publisher_svc.cookie import decode_cookie
from publisher_svc.cookie_retries import CookieRetries
from publisher_svc.inputs import check_user_id, cookie_for, hash_dii
from publisher_svc.limits import (
    DEFAULT_OPERATOR_CALLS_MAX,
    DEFAULT_SERVE_REFRESH_BUDGET_S,
    DEFAULT_SSP_CALLS_MAX,
    MAX_WAITING_PER_USER,
    OPERATOR_BUSY,
    PEER_SLOW_S,
    SSP_BUSY,
    UNRECORDED_LAST_TRY_S,
)
from publisher_svc.model import (
    GenerateOutcome,
    HashedDii,
    Identity,
    Impression,
    OperatorPeer,
    PeerError,
    PrivacySettings,
    RefreshOutcome,
    SspPeer,
    StorageMode,
)
from publisher_svc.peer_failures import (
    PeerFailures,
    operator_failure,
    peer_failure,
    ssp_input_refused,
    waited_past_deadline,
)
from publisher_svc.refresh_policy import Decision, decide, usable_without_refresh
from publisher_svc.results import (
    AdResult,
    ClientRefreshResult,
    Cookie,
    LoginResult,
    LoginStatus,
    Step,
    StepKind,
    TokenResult,
    TokenStatus,
    token_result,
)
from publisher_svc.store import SqliteStore, StoredIdentity
from publisher_svc.store_failures import OptOutNotRecorded, RefreshNotKept
from publisher_svc.unrecorded_optouts import UnrecordedOptOuts
from publisher_svc.user_locks import UserBusy, UserLocks
from svc_common import call_context
from svc_common.backoff import Backoff
from svc_common.clock import Clock, Monotonic, SystemClock
from svc_common.errors import (
    ErrorKind,
    ServiceError,
    invalid_argument,
    unavailable,
)
from svc_common.impression_limits import check_field_lengths, check_floor_price
from svc_common.sqlite_db import StoreUnavailable

_log = structlog.get_logger("publisher")

# ErrorInfo reason of a call the configured storage mode has no use for (Publisher._only_in).
WRONG_STORAGE_MODE = "WRONG_STORAGE_MODE"
_USER_BUSY = "the UID2 operator is slow: other calls for this user already wait on it"


def _with_request_id(rid: str | None, job: Callable[[], T]) -> Callable[[], T]:
    """`job`, run with the request id of the call that started it (its operator calls send it
    on, its log lines carry it), and nothing else of that call's: not its deadline, which the
    job outlives on purpose."""
    if rid is None:
        return job

    def run() -> T:
        call_context.begin(request_id=rid)
        try:
            return job()
        finally:
            call_context.end()

    return run


# Jobs off the callers' path (`_start`: impressions' refreshes, one per user or cookie; use
# marks; opt-out records), in flight at once at most; beyond that (an operator that hangs)
# impressions go out without starting more.
_MAX_PENDING_JOBS = 256

T = TypeVar("T")


class Publisher:
    def __init__(
        self,
        *,
        store: SqliteStore,
        operator: OperatorPeer,
        ssp: SspPeer,
        clock: Clock,
        mode: StorageMode = StorageMode.SERVER,
        on_behalf_of_site_id: int = 0,
        serve_refresh_budget_s: float = DEFAULT_SERVE_REFRESH_BUDGET_S,
        retry_backoff: Backoff | None = None,
        unrecorded_optouts: UnrecordedOptOuts | None = None,
        operator_calls_max: int = DEFAULT_OPERATOR_CALLS_MAX,
        ssp_calls_max: int = DEFAULT_SSP_CALLS_MAX,
        monotonic: Monotonic | None = None,
    ) -> None:
        if operator_calls_max < 1:
            raise ValueError("operator_calls_max must be at least 1")
        if ssp_calls_max < 1:
            raise ValueError("ssp_calls_max must be at least 1")
        self.store = store
        monotonic = monotonic or SystemClock()
        self._operator_calls = CallBound(
            "operator",
            operator_calls_max,
            busy_reason=OPERATOR_BUSY,
            slow_s=PEER_SLOW_S,
            monotonic=monotonic,
        )
        self._ssp_calls = CallBound(
            "ssp", ssp_calls_max, busy_reason=SSP_BUSY, slow_s=PEER_SLOW_S, monotonic=monotonic
        )
        # Opt-outs the operator answered that the store refused to record: honoured from here
        # until a later write records them (record_unrecorded_optouts).
        self.unrecorded_optouts = (
            UnrecordedOptOuts() if unrecorded_optouts is None else unrecorded_optouts
        )
        # When an impression's failed refresh is tried again (the background refresher has its
        # own, configurable): without it every later impression would start another.
        self.retry_backoff = retry_backoff or Backoff(base_s=1.0, cap_s=60.0)
        self.cookie_retries = CookieRetries(clock)
        self.operator = operator
        self.ssp = ssp
        self.clock = clock
        self.mode = mode
        self.on_behalf_of_site_id = on_behalf_of_site_id
        # Per-user locks: one refresh per user at a time, and logout / login / opt-out never
        # interleave with a refresh of the same user.
        self._user_locks = UserLocks(monotonic)
        # The `peer_failed` warnings of every call to the operator and the SSP.
        self.peer_failures = PeerFailures(monotonic)
        # Users whose refresh the operator just ended (OPTOUT, or the chain over), while that
        # is being written: a call that does not wait for their lock must not serve the token.
        self._ending: dict[str, TokenStatus] = {}
        # ... and the DIIs whose OPTOUT is being written (by how many writers): every user of
        # one is opted out.
        self._ending_dii: Counter[str] = Counter()
        self._ending_lock = threading.Lock()
        self.serve_refresh_budget_s = serve_refresh_budget_s
        # Jobs off the callers' path: an impression's refresh outlives its wait (its result is
        # stored, in server mode), one per user / cookie at a time; use marks; opt-out records.
        self._jobs = ThreadPoolExecutor(max_workers=8, thread_name_prefix="background-job")
        self._pending: dict[str, Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Stops the background jobs (those running finish; queued ones are dropped)."""
        # Flag first, under the lock `_start` submits under: no submit can then race shutdown,
        # which holds the pool's lock while cancelling jobs whose callbacks take ours.
        with self._pending_lock:
            self._closed = True
        self._jobs.shutdown(wait=False, cancel_futures=True)
        if len(self.unrecorded_optouts):
            self._last_try_to_record(UNRECORDED_LAST_TRY_S)
        if held := len(self.unrecorded_optouts):
            # The operator keeps them, and the refresh of each such identity is answered OPTOUT.
            _log.warning("unrecorded_optouts_dropped", count=held)

    def _last_try_to_record(self, wait_s: float) -> None:
        """One more try at recording the held opt-outs before a stop: the disk may have room
        again since the refresher paused. Waited for `wait_s` at most (a store another process
        holds would keep the try waiting for its 30 s busy timeout); a try still waiting then
        is left to the process's exit."""
        done = threading.Event()

        def record() -> None:
            try:
                self.record_unrecorded_optouts()
            except StoreUnavailable:
                pass  # counted as dropped below
            except Exception as exc:  # a thread's traceback would print its text
                _log.warning("unrecorded_optouts_last_try_failed", error_type=type(exc).__name__)
            finally:
                done.set()

        threading.Thread(target=record, name="unrecorded-optouts-last-try", daemon=True).start()
        done.wait(wait_s)

    def _operator_slot(self, *, by_user: bool) -> AbstractContextManager[None]:
        """A caller's call to the operator, counted against operator_calls_max while it runs
        (PeerError OPERATOR_BUSY when the operator is slow and every slot is taken); the
        background refresher's (`by_user` False) are not counted."""
        return self._operator_calls.slot() if by_user else nullcontext()

    def readings(self) -> dict[str, float]:
        """What /metrics shows of the publisher itself (svc_common.metrics), in every mode;
        no store access, so a scrape takes no store lock."""
        op_waiting, op_shed = self._operator_calls.readings()
        ssp_waiting, ssp_shed = self._ssp_calls.readings()
        return {
            # Opt-outs honoured from memory because the store refused them: not on disk yet.
            "unrecorded_optouts": float(len(self.unrecorded_optouts)),
            "operator_calls_waiting": float(op_waiting),
            "operator_calls_shed": float(op_shed),
            "ssp_calls_waiting": float(ssp_waiting),
            "ssp_calls_shed": float(ssp_shed),
        }

    def _only_in(self, mode: StorageMode, call: str, instead: str) -> None:
        """Refuses a call meant for the other storage mode: answered as if it applied (an
        empty token, a logout of nothing, a cookie refreshed where none is kept), it would
        hide the caller's integration mistake."""
        if self.mode is not mode:
            raise ServiceError(
                ErrorKind.FAILED_PRECONDITION,
                WRONG_STORAGE_MODE,
                f"{call} is for {mode.value}-side storage, and this publisher runs in "
                f"{self.mode.value}-side storage mode: {instead}",
                {"storageMode": self.mode.value},
            )

    def user_lock(
        self, user_id: str, wait_s: float | None = None, *, for_caller: bool = False
    ) -> AbstractContextManager[None]:
        """Held around everything that reads then writes the user's identity, operator calls
        included; other users never wait on it. `wait_s`: at most that long, else UserBusy
        (user_locks.py); `for_caller`: a caller's call, which does not wait where
        MAX_WAITING_PER_USER already do."""
        limit = MAX_WAITING_PER_USER if for_caller else None
        return self._user_locks.hold(user_id, wait_s, max_waiting=limit, stuck_after_s=PEER_SLOW_S)

    # -- login / logout / site opt-out ----------------------------------------------------

    def login(
        self,
        user_id: str,
        email: str | None,
        phone: str | None,
        privacy: PrivacySettings,
        *,
        email_hash: str | None = None,
        phone_hash: str | None = None,
    ) -> LoginResult:
        check_user_id(user_id)
        dii = hash_dii(email, phone, email_hash, phone_hash)
        try:
            # As long as the caller waits: a login has no held token to fall back on.
            with self.user_lock(user_id, callers_remaining_s(), for_caller=True):
                result = self._login(user_id, dii, privacy)
        except UserBusy as busy:
            if busy.crowded:
                raise unavailable(OPERATOR_BUSY, _USER_BUSY) from None
            raise waited_past_deadline() from None
        if result.status is not LoginStatus.SUCCESS and self.mode is StorageMode.CLIENT:
            return LoginResult(result.status, clear_cookie=True)
        return result

    def _login(self, user_id: str, dii: HashedDii, privacy: PrivacySettings) -> LoginResult:
        """Login's rules; the caller holds the user's lock. Every refusal deletes the stored
        identity: whatever the user had before must not outlive a refusal."""
        if self.store.is_site_optout(user_id):
            self._record_unrecorded(user_id)
            self.store.delete(user_id)
            self._wrote()
            return LoginResult(LoginStatus.SITE_OPTOUT)
        if self.store.is_operator_optout(dii.key) or self.unrecorded_optouts.holds_dii(dii.key):
            # Reference §1.7: never call generate again for an opted-out DII.
            return self._end_as_opted_out(user_id, dii)
        try:
            with self._operator_slot(by_user=True):
                result = self.operator.generate(dii, privacy, self.on_behalf_of_site_id)
        except PeerError as err:
            # The hashed DII is ours and well formed: an INVALID_ARGUMENT is about the
            # caller's privacy settings.
            raise operator_failure(err, failures=self.peer_failures, caller_input=True) from None
        self.peer_failures.tick("OPERATOR")
        now = self.clock.now_ms()
        if result.outcome is GenerateOutcome.OPTOUT:
            _log.info("login_optout")
            return self._end_as_opted_out(user_id, dii)
        if result.outcome is GenerateOutcome.INSUFFICIENT_CONSENT or result.identity is None:
            # Consent withdrawn (or never given): the identity generated under the earlier
            # consent must no longer be sent, nor refreshed in the background.
            self._record_unrecorded(user_id)
            self.store.delete(user_id)
            self._wrote()
            _log.info("login_insufficient_consent")
            return LoginResult(LoginStatus.INSUFFICIENT_CONSENT)
        identity = result.identity
        if self.mode is StorageMode.CLIENT:
            return LoginResult(LoginStatus.SUCCESS, cookie_for(identity), identity.refresh_from)
        # First: a late record of an earlier opt-out would end this new identity.
        self._record_unrecorded(user_id)
        stored = self.store.put_unless_site_optout(user_id, dii.key, identity, now)
        self._wrote()
        if not stored:
            return LoginResult(LoginStatus.SITE_OPTOUT)
        return LoginResult(LoginStatus.SUCCESS, None, identity.refresh_from)

    def _end_as_opted_out(self, user_id: str, dii: HashedDii) -> LoginResult:
        """A login the operator answered OPTOUT (now or before): records the DII's opt-out,
        with any the store refused earlier for the user, and ends the user's identity; from
        then GetAdvertisingToken says OPTOUT (not NO_IDENTITY) until the next login.

        A store that refuses this write too: the opt-out is held in memory and honoured at
        once by every path of this process. In server mode the login still answers the store's
        refusal (UNAVAILABLE): the identity stored for the user before is ended only in memory,
        so after a restart it would be served again until its next refresh; the caller's retry
        (no operator call: the opt-out is held) records it. In client mode there is no stored
        identity to end (the record only spares the operator a call at the next login), so the
        login answers OPTOUT and clears the cookie."""
        now = self.clock.now_ms()
        optouts = {dii.key: now, **self.unrecorded_optouts.of_user(user_id)}
        try:
            with self._opting_out(dii.key):
                self.store.end_as_opted_out(user_id, optouts, now)
        except StoreUnavailable as err:
            held = self._hold_unrecorded(user_id, dii.key, now)
            if not held or self.mode is StorageMode.SERVER:
                raise
            _log.warning("login_optout_not_recorded", reason=err.reason)
            return LoginResult(LoginStatus.OPTOUT)
        self.unrecorded_optouts.forget(user_id, optouts)
        self._wrote()
        return LoginResult(LoginStatus.OPTOUT)

    def logout(self, user_id: str) -> bool:
        self._only_in(
            StorageMode.SERVER,
            "Logout",
            "it stores no identity; the caller deletes the user's __uid_2 cookie",
        )
        check_user_id(user_id)
        with self.user_lock(user_id):
            self._record_unrecorded(user_id)
            deleted = self.store.delete(user_id)
        self._wrote()
        return deleted

    def set_site_optout(self, user_id: str, opted_out: bool) -> bool:
        check_user_id(user_id)
        with self.user_lock(user_id):
            self._record_unrecorded(user_id)
            self.store.set_site_optout(user_id, opted_out, self.clock.now_ms())
        self._wrote()
        return opted_out

    # -- opt-outs the store refused to record ----------------------------------------------
    # Every write that touches a user's identity first records the user's (_record_unrecorded,
    # under the user's lock), so a late record never ends an identity stored after it, and a
    # refusal there is the refusal the write itself would meet.

    def _hold_unrecorded(self, user_id: str, dii_key: str, now_ms: int) -> bool:
        """Holds an opt-out the store just refused; False (logged) when the set is full."""
        if self.unrecorded_optouts.add(user_id, dii_key, now_ms):
            return True
        _log.warning("unrecorded_optouts_full", limit=self.unrecorded_optouts.limit)
        return False

    def _record_unrecorded(self, user_id: str) -> bool:
        """Records the user's held opt-outs (ending the user's identity, as a login answered
        OPTOUT does) and drops them; whether there were any. Caller holds the user's lock
        (none for "", which ends no identity). Raises the store's refusal, keeping them."""
        optouts = self.unrecorded_optouts.of_user(user_id)
        if not optouts:
            return False
        self.store.end_as_opted_out(user_id, optouts, max(optouts.values()))
        self.unrecorded_optouts.forget(user_id, optouts)
        _log.info("unrecorded_optouts_recorded", count=len(optouts))
        return True

    def record_unrecorded_optouts(self) -> int:
        """Records every held opt-out, user by user under each user's lock (the background
        refresher's pass calls this; so does a job started after a write goes through).
        Raises the store's refusal at the first it meets, keeping the rest for the next try.
        Returns how many users' (or client-side refreshes') were recorded."""
        recorded = 0
        for user_id in self.unrecorded_optouts.users():
            if not user_id:
                recorded += self._record_unrecorded(user_id)
                continue
            with self.user_lock(user_id):
                recorded += self._record_unrecorded(user_id)
        return recorded

    def _wrote(self) -> None:
        """The store just took a write: the opt-outs it refused earlier likely fit now. Recorded
        off the caller's path (one job at a time), so that a deployment without the background
        refresher records them too; a refusal there is silent (UNAVAILABLE, see _forget)
        and the next write tries again."""
        if len(self.unrecorded_optouts):
            self._start("unrecorded-optouts", self.record_unrecorded_optouts)

    # -- refresh --------------------------------------------------------------------------

    def step(self, identity: Identity, *, by_user: bool = True) -> Step:
        """One pass of the refresh rules. Raises UNAVAILABLE / OPERATOR_UNAVAILABLE only when
        the operator is unreachable and the stored token has expired (nothing is lost: the
        identity stays refreshable until refresh_expires). `by_user`: a caller's request is
        waiting (its call counts against operator_calls_max), not the background refresher."""
        now = self.clock.now_ms()
        decision = decide(identity, now)
        if decision is Decision.USE:
            return Step(StepKind.USE, identity)
        if decision is Decision.LOGIN_REQUIRED:
            return Step(StepKind.LOGIN_REQUIRED)
        try:
            with self._operator_slot(by_user=by_user):
                result = self.operator.refresh(identity.refresh_token)
        except PeerError as err:
            if err.unavailable and usable_without_refresh(identity, self.clock.now_ms()):
                return Step(StepKind.STALE, identity, not_asked=err.reason == OPERATOR_BUSY)
            raise operator_failure(err, failures=self.peer_failures) from None
        self.peer_failures.tick("OPERATOR")
        if result.outcome is RefreshOutcome.SUCCESS and result.identity is not None:
            return Step(StepKind.REFRESHED, result.identity)
        if result.outcome is RefreshOutcome.OPTOUT:
            return Step(StepKind.OPTOUT)
        return Step(StepKind.LOGIN_REQUIRED)

    def refresh_stored(
        self, user_id: str, *, by_user: bool = True
    ) -> tuple[Step, StoredIdentity | None]:
        """Applies the refresh rules to a stored identity and persists the outcome. Caller holds
        the user's lock. `by_user`: the user's own request (their token, their ad) asked for
        it, rather than the background refresher."""
        if self.unrecorded_optouts.holds_user(user_id):
            # Opted out already, though not recorded: no need to ask the operator again. A
            # store that still refuses the record is answered as when it refused it first.
            stored = self.store.get(user_id)
            try:
                self._record_unrecorded(user_id)
            except StoreUnavailable as err:
                raise OptOutNotRecorded(err) from None
            return Step(StepKind.OPTOUT), stored
        stored = self.store.get(user_id)
        if stored is None:
            return Step(StepKind.LOGIN_REQUIRED), None
        step = self.step(stored.identity, by_user=by_user)
        old = stored.identity.refresh_token
        now = self.clock.now_ms()
        if step.kind is StepKind.REFRESHED and step.identity is not None:
            try:
                self.store.replace_if_current(user_id, old, step.identity, now, by_user=by_user)
            except StoreUnavailable as err:
                raise RefreshNotKept(err) from None
        elif step.kind is StepKind.OPTOUT:
            self._ending[user_id] = TokenStatus.OPTOUT
            try:
                with self._opting_out(stored.dii_key):
                    self.store.record_operator_optout(stored.dii_key, now, user_id)
            except StoreUnavailable as err:
                self._hold_unrecorded(user_id, stored.dii_key, now)
                raise OptOutNotRecorded(err) from None
            finally:
                self._ending.pop(user_id, None)
            _log.info("refresh_optout")
        elif step.kind is StepKind.LOGIN_REQUIRED:
            self._ending[user_id] = TokenStatus.LOGIN_REQUIRED
            try:
                self.store.end_if_current(user_id, old, now)
            finally:
                self._ending.pop(user_id, None)
        else:
            return step, stored  # USE or STALE: nothing written
        self._wrote()
        return step, stored

    def get_advertising_token(self, user_id: str) -> TokenResult:
        """The current token, refreshed first when due: the caller asked for the freshest, so
        this waits for the operator (up to its deadline) and for a refresh of the same user
        already in flight; an unreachable operator still yields the held unexpired token."""
        self._only_in(
            StorageMode.SERVER,
            "GetAdvertisingToken",
            "the token is in the __uid_2 cookie Login returned; refresh it with "
            "RefreshClientIdentity",
        )
        check_user_id(user_id)
        return self._current_token(user_id)

    @contextmanager
    def _opting_out(self, dii_key: str) -> Iterator[None]:
        """Around the write of the DII's opt-out: calls that do not wait for a user's lock
        (_read_current) take every user of it as opted out meanwhile."""
        with self._ending_lock:
            self._ending_dii[dii_key] += 1
        try:
            yield
        finally:
            with self._ending_lock:
                self._ending_dii[dii_key] -= 1
                if self._ending_dii[dii_key] <= 0:
                    del self._ending_dii[dii_key]

    def _read_current(self, user_id: str) -> TokenResult | StoredIdentity:
        """The answer to a token call that needs no operator (opted out, no identity), or the
        stored identity to go on with."""
        ending = self._ending.get(user_id)
        if ending is not None:
            return TokenResult(ending)  # the operator ended it; the store is being told
        if self.unrecorded_optouts.holds_user(user_id):
            # Opted out, not yet recorded: what ended_status will say once it is. No write
            # here: the write that records it is the next one the store takes.
            return TokenResult(TokenStatus.OPTOUT)
        stored = self.store.get(user_id)
        # Another user's opt-out of this DII the store refused, held in memory (once
        # recorded, the store ends every identity of the DII itself).
        if stored is not None and (
            self._ending_dii[stored.dii_key] > 0
            or self.unrecorded_optouts.holds_dii(stored.dii_key)
        ):
            return TokenResult(TokenStatus.OPTOUT)
        if stored is None:
            # A refresh (perhaps the background refresher's) that ended the identity is
            # reported as this call's own would have been, until the user logs in again.
            ended = self.store.ended_status(user_id)
            return TokenResult(TokenStatus(ended) if ended else TokenStatus.NO_IDENTITY)
        return stored

    def _current_token(self, user_id: str, *, respect_backoff: bool = False) -> TokenResult:
        """`respect_backoff`: while a failed refresh is backing off (next attempt not yet due)
        and the held token is unexpired, use it rather than call the operator again. While
        another call of the user's waits on the operator past the bounded wait (user_lock),
        the held token if unexpired, as when the operator is unreachable."""
        remaining = callers_remaining_s()
        wait_s = remaining
        try:
            try:
                # The common case, nobody else at the user's lock: no wait, and no store read
                # to choose one.
                return self._current_token_locked(user_id, respect_backoff, 0.0)
            except UserBusy as busy:
                if busy.crowded:
                    raise
            current = self._read_current(user_id)
            if isinstance(current, StoredIdentity) and usable_without_refresh(
                current.identity, self.clock.now_ms()
            ):
                # A held token to fall back on: a call of the user's that waits on the
                # operator is waited for briefly (PEER_SLOW_S), not to the caller's deadline.
                wait_s = PEER_SLOW_S if remaining is None else min(PEER_SLOW_S, remaining)
            return self._current_token_locked(user_id, respect_backoff, wait_s)
        except UserBusy as busy:
            current = self._read_current(user_id)
            if isinstance(current, TokenResult):
                return current
            if usable_without_refresh(current.identity, self.clock.now_ms()):
                if not current.used_since_refresh:
                    self._note_use(user_id)
                return token_result(Step(StepKind.STALE, current.identity, not_asked=True))
            if wait_s == remaining and not busy.crowded:  # the caller's deadline ended it
                raise waited_past_deadline() from None
            raise unavailable(OPERATOR_BUSY, _USER_BUSY) from None  # expired while waiting

    def _current_token_locked(
        self, user_id: str, respect_backoff: bool, wait_s: float | None
    ) -> TokenResult:
        with self.user_lock(user_id, wait_s, for_caller=True):
            current = self._read_current(user_id)
            if isinstance(current, TokenResult):
                return current
            stored = current
            if not stored.used_since_refresh:
                self._note_use(user_id)
            now = self.clock.now_ms()
            if (
                respect_backoff
                and stored.failed_attempts > 0  # backing off, not resting (store.rest)
                and stored.next_attempt_at > now
            ):
                # An expired token backs off too: users coming back after the token's 3 days
                # are the common case, and each of their impressions would otherwise call an
                # operator that is failing (3 tries each).
                if usable_without_refresh(stored.identity, now):
                    return token_result(Step(StepKind.STALE, stored.identity))
                # Impressions only (respect_backoff): goes out without a token, as after a
                # failed refresh, and logs nothing (_forget).
                raise unavailable("OPERATOR_UNAVAILABLE", "the identity's refresh is backing off")
            try:
                step, _ = self.refresh_stored(user_id)
            except RefreshNotKept:
                # Postponing would be a second write, failing the same way.
                if usable_without_refresh(stored.identity, now):
                    return token_result(Step(StepKind.STALE, stored.identity))
                raise
            except OptOutNotRecorded:
                _log.warning("refresh_optout_not_recorded")
                return token_result(Step(StepKind.OPTOUT))
            except StoreUnavailable:
                raise  # postponing would be a second write, failing the same way
            except ServiceError as err:
                if respect_backoff and err.reason != OPERATOR_BUSY:  # not asked: no failure
                    self.postpone_refresh(user_id, stored, now, self.retry_backoff)
                raise
            if respect_backoff and step.kind is StepKind.STALE and not step.not_asked:
                self.postpone_refresh(user_id, stored, now, self.retry_backoff)  # unreachable
        return token_result(step)

    def postpone_refresh(
        self, user_id: str, stored: StoredIdentity, now_ms: int, backoff: Backoff
    ) -> None:
        """A refresh of `stored` failed: the next attempt waits (its identity unchanged)."""
        failed = stored.failed_attempts
        retry_at = backoff.next_attempt_ms(failed, now_ms)
        self.store.postpone(user_id, stored.identity.refresh_token, retry_at, failed + 1)

    def refresh_client(
        self,
        cookie_value: str,
        email: str | None = None,
        phone: str | None = None,
        *,
        email_hash: str | None = None,
        phone_hash: str | None = None,
    ) -> ClientRefreshResult:
        self._only_in(
            StorageMode.CLIENT,
            "RefreshClientIdentity",
            "it keeps identities by user id; use GetAdvertisingToken",
        )
        identity = decode_cookie(cookie_value)
        given = (email, phone, email_hash, phone_hash)
        dii = hash_dii(*given) if any(v is not None for v in given) else None
        if dii is not None and (
            self.store.is_operator_optout(dii.key) or self.unrecorded_optouts.holds_dii(dii.key)
        ):
            # Another cookie of this DII was answered OPTOUT: no call, and this one ends too.
            return ClientRefreshResult(TokenStatus.OPTOUT)
        step = self.step(identity)
        serving = step.serving
        if serving is not None:
            return ClientRefreshResult(
                TokenStatus.SUCCESS,
                cookie_for(serving),
                step.kind is StepKind.REFRESHED,
                serving.advertising_token,
                step.kind is StepKind.STALE and not step.not_asked,
                serving.identity_expires,
            )
        if step.kind is StepKind.OPTOUT:
            if dii is not None:
                now = self.clock.now_ms()
                try:
                    self.store.record_operator_optout(dii.key, now)
                except StoreUnavailable as err:
                    # The client drops its identity all the same; the record only spares the
                    # operator a call at this user's next login, so it is held (no user) for
                    # the next write.
                    self._hold_unrecorded("", dii.key, now)
                    _log.warning("refresh_optout_not_recorded", reason=err.reason)
                else:
                    self._wrote()
            return ClientRefreshResult(TokenStatus.OPTOUT)
        return ClientRefreshResult(TokenStatus.LOGIN_REQUIRED)

    # -- impressions ----------------------------------------------------------------------

    def serve_ad(
        self,
        *,
        user_id: str | None,
        cookie_value: str | None,
        placement_id: str,
        page_domain: str,
        floor_price: float,
        app_bundle: str = "",
    ) -> AdResult:
        if user_id is not None:
            self._only_in(
                StorageMode.SERVER, "ServeAd with user_id", "send the __uid_2 cookie_value"
            )
        if cookie_value is not None:
            self._only_in(StorageMode.CLIENT, "ServeAd with cookie_value", "send the user_id")
        # Blank is missing, as the SSP reads it: the caller hears its mistake as ours, not as an
        # SSP refusal passed on.
        if not page_domain.strip() and not app_bundle.strip():
            raise invalid_argument(
                "MISSING_PAGE_DOMAIN", "page_domain (web) or app_bundle (app, CTV) is required"
            )
        if page_domain.strip() and app_bundle.strip():
            raise invalid_argument(
                "CONFLICTING_INVENTORY", "give either page_domain or app_bundle, not both"
            )
        if not placement_id:
            raise invalid_argument("MISSING_PLACEMENT_ID", "placement_id is required")
        # The SSP's own limits, checked here so the caller hears of its mistake as such rather
        # than as an SSP refusal of ours.
        check_field_lengths(
            placement_id=placement_id, page_domain=page_domain, app_bundle=app_bundle
        )
        check_floor_price(floor_price, "INVALID_FLOOR_PRICE")
        token, expires = "", 0
        cookie: Cookie | None = None
        clear = False
        refresh_token: str | None = None
        # An explicit empty user_id is the caller's lookup gone wrong, not an anonymous visitor
        # (who sends no subject); an empty cookie is a browser without one.
        if user_id is not None:
            token, expires = self._impression_token(check_user_id(user_id))
        elif cookie_value:
            token, expires, cookie, clear, refresh_token = self._impression_cookie(cookie_value)
        try:
            with self._ssp_calls.slot():
                # Looked at again once the waits are over (a refresh, an SSP slot): the token
                # may have expired, or its identity been ended, meanwhile.
                if token and self._ended_meanwhile(expires, user_id, refresh_token):
                    token = ""
                    if refresh_token is not None and self.cookie_retries.ended(refresh_token):
                        cookie, clear = None, True
                impression = Impression(page_domain, placement_id, floor_price, token, app_bundle)
                decision = self.ssp.submit_impression(impression)
        except PeerError as err:
            raise peer_failure(
                err, "SSP", failures=self.peer_failures, caller_input=ssp_input_refused
            ) from None
        self.peer_failures.tick("SSP")
        return AdResult(decision, bool(token), cookie, clear)

    def _ended_meanwhile(
        self, expires: int, user_id: str | None, refresh_token: str | None
    ) -> bool:
        """Whether a token chosen for an impression may no longer go out: expired, or its
        identity opted out, logged out or ended (server mode), or its cookie's identity ended
        by a refresh (client mode)."""
        if self.clock.now_ms() >= expires:
            return True
        if user_id is not None:
            return isinstance(self._read_current(user_id), TokenResult)
        return refresh_token is not None and self.cookie_retries.ended(refresh_token)

    # An impression never waits long on a refresh. The one that finds the refresh due starts it
    # and waits serve_refresh_budget_s at most (a healthy operator answers well within it, so an
    # opt-out is honoured at once); past that, or when a refresh of the same identity is already
    # in flight, it goes out with the held token if that is unexpired (as when the operator is
    # unreachable), else without one. The refresh runs on; in server mode its result is stored.

    def _impression_token(self, user_id: str) -> tuple[str, int]:
        """(the token to send or "", when it expires)."""
        if self.unrecorded_optouts.holds_user(user_id):
            return "", 0  # opted out, not yet recorded: no token, as once it is
        stored = self.store.get(user_id)
        if stored is None or self.unrecorded_optouts.holds_dii(stored.dii_key):
            return "", 0
        if not stored.used_since_refresh:
            self._note_use(user_id)
        identity, now = stored.identity, self.clock.now_ms()
        if decide(identity, now) is Decision.USE:
            return identity.advertising_token, identity.identity_expires
        held = identity.advertising_token if usable_without_refresh(identity, now) else ""
        job, new = self._start(
            "user:" + user_id, lambda: self._current_token(user_id, respect_backoff=True)
        )
        if held and not new:
            return held, identity.identity_expires
        result, _ = self._within_budget(job)
        if result is not None:
            return result.advertising_token, result.identity_expires
        return held, identity.identity_expires

    def _impression_cookie(
        self, cookie_value: str
    ) -> tuple[str, int, Cookie | None, bool, str | None]:
        """(token, when it expires, new cookie or None, clear the cookie, the cookie's refresh
        token) for an impression in client mode."""
        try:
            identity = decode_cookie(cookie_value)
        except ServiceError:
            return "", 0, None, True, None  # not an identity: tell the caller to drop it
        now = self.clock.now_ms()
        decision = decide(identity, now)
        expires = identity.identity_expires
        refresh_token = identity.refresh_token
        if decision is Decision.USE:
            return identity.advertising_token, expires, None, False, refresh_token
        if decision is Decision.LOGIN_REQUIRED:
            return "", 0, None, True, refresh_token
        held = identity.advertising_token if usable_without_refresh(identity, now) else ""
        # A new identity can reach the caller only in this response: one that comes later than
        # the budget is dropped (the cookie's refresh token stays valid) and the next impression
        # or RefreshClientIdentity refreshes again.
        if self.cookie_retries.ended(refresh_token):
            return "", 0, None, True, None  # a refresh that came after its impression ended it
        if self.cookie_retries.waiting(refresh_token):
            # Its last refresh failed: not tried again yet.
            return held, expires, None, False, refresh_token
        job, new = self._start(
            "cookie:" + refresh_token, lambda: self._refresh_cookie(cookie_value, refresh_token)
        )
        if held and not new:
            return held, expires, None, False, refresh_token
        refreshed, error = self._within_budget(job)
        if isinstance(error, ServiceError) and error.kind is ErrorKind.INVALID_ARGUMENT:
            return "", 0, None, True, None
        if refreshed is None:
            return held, expires, None, False, refresh_token
        cookie = refreshed.cookie if refreshed.refreshed else None
        return (
            refreshed.advertising_token,
            refreshed.identity_expires,
            cookie,
            refreshed.clear_cookie,
            # A new identity, just issued, has no ending to watch for; the held one does.
            None if refreshed.refreshed else refresh_token,
        )

    def _refresh_cookie(self, cookie_value: str, refresh_token: str) -> ClientRefreshResult:
        """An impression's refresh of a client-side identity, counted in `cookie_retries`: a
        failure (operator unreachable or refusing) puts the cookie's next try off."""
        try:
            result = self.refresh_client(cookie_value)
        except ServiceError as err:
            if err.reason != OPERATOR_BUSY and err.kind is not ErrorKind.INVALID_ARGUMENT:
                self.cookie_retries.failed(refresh_token, self.retry_backoff)
            raise
        if result.operator_failed:
            self.cookie_retries.failed(refresh_token, self.retry_backoff)
        elif result.status is TokenStatus.OPTOUT:
            # Recorded whether or not an impression still waits for it (see cookie_retries).
            # Only an opt-out: anyone can make refresh tokens the operator calls invalid, and
            # they must not push real opt-outs out of the bounded memory.
            self.cookie_retries.end(refresh_token)
        else:
            self.cookie_retries.succeeded(refresh_token)
        return result

    def _note_use(self, user_id: str) -> None:
        """Records, off the caller's path, that the user used an identity the background
        refreshed (store.mark_used): a durable write the answer need not wait for. Skipped
        when the pool is full; the user's next request records it."""
        self._start("used:" + user_id, lambda: self.store.mark_used(user_id))

    def _start(self, key: str, job: Callable[[], T]) -> tuple[Future[T] | None, bool]:
        """(`job` on the background jobs' pool, True), or (the one already in flight for `key`,
        False); (None, False) when too many are in flight (the operator hangs) or the
        publisher is stopping."""
        with self._pending_lock:
            if self._closed:
                return None, False
            running = self._pending.get(key)
            if running is not None:
                return running, False
            if len(self._pending) >= _MAX_PENDING_JOBS:
                return None, False
            rid = call_context.request_id()
            try:
                future = self._jobs.submit(_with_request_id(rid, job))
            except RuntimeError:  # shut down
                return None, False
            self._pending[key] = future
        future.add_done_callback(lambda f: self._forget(key, f, rid))
        return future, True

    def _forget(self, key: str, future: Future[Any], rid: str | None) -> None:
        """Drops the finished job and logs its failure, with the request id of the call that
        started it: the callback runs after the job's own context has ended."""
        with self._pending_lock:
            if self._pending.get(key) is future:
                del self._pending[key]
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and self._closed:
            # A job that outlived close (the pool is not waited for): its store or channel
            # may be closed under it.
            _log.info("background_job_abandoned", error_type=type(error).__name__)
            return
        # Nobody may be waiting any more: the failure is logged here, once, by kind only (the
        # key's prefix: never its user id or refresh token).
        fields = {"job": key.split(":", 1)[0]}
        if rid is not None:
            fields["request_id"] = rid
        if isinstance(error, ServiceError) and error.kind is not ErrorKind.UNAVAILABLE:
            _log.warning(
                "background_job_failed", code=error.kind.value, reason=error.reason, **fields
            )
        elif error is not None and not isinstance(error, ServiceError):
            _log.error("background_job_failed", error_type=type(error).__name__, **fields)

    def _within_budget(
        self, job: Future[T] | None
    ) -> tuple[T, None] | tuple[None, BaseException | None]:
        """(the job's result, None) if it comes within the budget; else (None, its error or
        None). Whatever went wrong, the impression goes out with the held token if unexpired,
        else without one, as when the operator is unreachable; the failure is logged once,
        by `_forget`."""
        if job is None:
            return None, None
        try:
            return job.result(timeout=self.serve_refresh_budget_s), None
        except (FutureTimeout, CancelledError):  # slow, or the publisher is stopping
            return None, None
        except Exception as exc:
            return None, exc
