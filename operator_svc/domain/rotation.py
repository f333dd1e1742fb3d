"""Scheduled rotation (`serve --rotate-keys-every`, `--rotate-salts-daily-fraction`): the
`keys rotate` and `salts rotate` a deployment would otherwise run from cron, run by `serve`
itself, so that forgetting the cron no longer means every token request failing with
NO_ACTIVE_KEY once the keys' year is up.

Every serve process on a data dir runs its own `Rotator`, and they agree without talking to each
other: whether a rotation is due is decided inside the write transaction that rotates. SQLite
lets one such transaction in at a time (BEGIN IMMEDIATE), so the process that comes second finds
the first one's rotation there and does nothing. What is due is read from the store, never from
memory, so a restart or a rotation by hand counts too: keys once the master keyset's newest key
is older than the schedule; salts a day after the rotation time stored with them
(admin.rotate_salts_in). The new keys and salts reach every process, the rotating one included,
through its state sync, as those of a `keys rotate` do.

A check that fails (the store busy past its timeout, the disk refusing the write) logs a warning
and is tried again at the next check; it never stops the service. A rotation is one
transaction, never half-written: a stop starts none, waits for one that holds the write lock to
commit and log its line, and one the process exit cuts short SQLite rolls back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.store import KeyRow, KeysetRow, OperatorStore
from svc_common.clock import Clock
from svc_common.failure_streak import FailureStreak
from uid2_crypto.keys import MASTER_KEYSET_ID, REFRESH_KEYSET_ID, Key, KeyRing

_log = structlog.get_logger("rotation")

DAY_MS = 86_400_000
# How long a stop waits for a check in progress before it looks at what the check is doing.
STOP_WAIT_S = 1.0
# How long a stop then waits for a rotation that holds the write lock to commit and log its line:
# finishing it beats throwing it away (a 1/365 salt rotation of 2^20 buckets holds the lock about
# a second; all the buckets, a few). A check still waiting for another process's lock is not
# waited for: it finds the stop once it has the lock and writes nothing, or the process exit
# ends it first; either way nothing is written.
FINISH_WAIT_S = 10.0


# The new keys of a scheduled rotation activate this long after it: a decryptor (SSP, DSP)
# fetches keys every hour by default, ±10%, so by then each has them; `keys rotate`'s default
# hour would leave some a few minutes short (they recover by fetching early on an unknown key).
SCHEDULED_ACTIVATION_DELAY_S = 2 * 3600
# Keys are due this long before the master or refresh keys would run out, whatever the schedule
# says: a rotation by hand with a long --activation-delay can leave a gap the newest key's age
# does not show.
RUN_OUT_MARGIN_S = 30 * 86_400


def keys_due(newest_created_s: int | None, run_out_s: int, now_ms: int, every_s: int) -> bool:
    """Whether a key rotation is due: the master keyset's newest key is `every_s` old (or it has
    none), or the keys every token needs run out (`run_out_s`, epoch s) within the margin. A
    newest key dated ahead of `now_ms` (another host's clock) is not due by age."""
    now_s = now_ms // 1000
    if newest_created_s is None or now_s - newest_created_s >= every_s:
        return True
    return run_out_s - now_s < RUN_OUT_MARGIN_S + SCHEDULED_ACTIVATION_DELAY_S


def keys_run_out_s(rows: Iterable[KeyRow], enabled: Iterable[int], now_s: int) -> int:
    """When the master or the refresh keyset first has no active key (epoch s), from the
    store's key rows of those keysets; every token needs one of each. Counted from when a key
    a rotation now adds would be in use (SCHEDULED_ACTIVATION_DELAY_S from now): no key active
    before then is one no rotation can help, and counting it would rotate at every check
    until the new key activates. A keyset a rotation skips (disabled) is not counted."""
    on = set(enabled)
    counted = [ks for ks in (MASTER_KEYSET_ID, REFRESH_KEYSET_ID) if ks in on]
    if not counted:
        return _NEVER
    ring = KeyRing(
        [
            Key(r.key_id, r.keyset_id, r.site_id, r.created_s, r.activates_s, r.expires_s, r.secret)
            for r in rows
            if r.keyset_id in counted
        ]
    )
    from_s = now_s + SCHEDULED_ACTIVATION_DELAY_S
    return min(ring.active_until(ks, from_s) for ks in counted)


_NEVER = 2**62


def salts_due(rotated_ms: int | None, now_ms: int) -> bool:
    """Whether the daily salt rotation is due: a day since the last one (or there never was
    one: the buckets due soonest are rotated, as a first daily `salts rotate` would)."""
    return rotated_ms is None or now_ms - rotated_ms >= DAY_MS


class Rotator:
    """Checks at once, then every `config.rotation_check_interval_s`, whether a scheduled
    rotation is due, and runs it. `check()` is one such check, for tests and the thread."""

    def __init__(
        self,
        store: OperatorStore,
        config: OperatorConfig,
        *,
        clock: Clock,
        rng: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._rng = rng
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator-rotation", daemon=True)
        # One streak per job: each line says which one fails, and recovers.
        self._key_failures = FailureStreak(_log, "key_rotation_failed", "key_rotation_recovered")
        self._salt_failures = FailureStreak(_log, "salt_rotation_failed", "salt_rotation_recovered")
        # Checks finished so far (rotating or not), so a caller can tell one has run.
        self.checks = 0
        # True from when a check holds the write lock, set to rotate, until its line is logged.
        self._rotating = False

    @property
    def failures(self) -> int:
        """Checks that failed in a row (both jobs'), for /metrics: a rotation that keeps failing
        is the forgotten cron again, with an error in the log nobody reads."""
        return self._key_failures.failures + self._salt_failures.failures

    def check(self) -> list[str]:
        """Rotates whatever is due; returns what it rotated ("keys", "salts"). A failure is
        logged and counted, never raised: the next check tries again."""
        rotated: list[str] = []
        jobs: tuple[tuple[str, Callable[[], Any], FailureStreak], ...] = (
            ("keys", self.rotate_keys_if_due, self._key_failures),
            ("salts", self.rotate_salts_if_due, self._salt_failures),
        )
        for name, job, streak in jobs:
            if self._stop.is_set():  # a stop begun: start no rotation it would have to wait for
                break
            try:
                done = job()
            except Exception as exc:  # StoreBusy, StoreWriteFailed, a damaged store: retried
                streak.failed(exc)
                continue
            finally:
                self._rotating = False
            streak.succeeded()
            if done is not None:
                rotated.append(name)
        self.checks += 1
        return rotated

    def rotate_keys_if_due(self) -> admin.RotationReport | None:
        """`keys rotate` with serve's own lifetimes and clock skew, the new keys activating
        SCHEDULED_ACTIVATION_DELAY_S later, when the newest master key is
        `rotate_keys_every_s` old or the keys run out within RUN_OUT_MARGIN_S; None when not
        due."""
        config = self._config
        every_s = config.rotate_keys_every_s
        if not every_s:
            return None
        # A plain read first, so that the write lock is taken only when a rotation looks due.
        now_ms = self._clock.now_ms()
        newest = self._store.newest_key_created_s(MASTER_KEYSET_ID)
        run_out = keys_run_out_s(
            self._store.token_key_rows(), self._enabled(self._store.keysets()), now_ms // 1000
        )
        if not keys_due(newest, run_out, now_ms, every_s):
            return None
        with self._store.transaction() as conn:
            if not self._may_rotate():
                return None
            # Again under the write lock, where it counts: another process may have rotated
            # since the read above, and one rotation is all a schedule asks for.
            now_ms = self._clock.now_ms()
            newest = OperatorStore.newest_key_created_in(conn, MASTER_KEYSET_ID)
            run_out = keys_run_out_s(
                OperatorStore.token_keys_in(conn),
                self._enabled(OperatorStore.keysets_in(conn)),
                now_ms // 1000,
            )
            if not keys_due(newest, run_out, now_ms, every_s):
                return None
            report = admin.rotate_keys_in(
                conn,
                now_ms=now_ms,
                rng=self._rng,
                activation_delay_s=SCHEDULED_ACTIVATION_DELAY_S,
                token_lifetime_s=config.token_lifetime_s,
                refresh_lifetime_s=config.refresh_lifetime_s,
                clock_skew_s=config.allow_clock_skew_s,
                accepted_lifetime_s=config.accepted_lifetime_s,
            )
        # Logged once committed: a rotation the commit refused was not one.
        _log.info(
            "keys_rotated_on_schedule",
            created=report.created,
            pruned=report.pruned,
            activates=report.activates,
            every_s=every_s,
        )
        return report

    def rotate_salts_if_due(self) -> int | None:
        """`salts rotate --fraction F` once a day; how many buckets it rotated, None when not
        due."""
        fraction = self._config.rotate_salts_daily_fraction
        if not fraction:
            return None
        now_ms = self._clock.now_ms()
        if not salts_due(self._store.salts_rotated_ms(), now_ms):
            return None
        # Computed before the write lock, which then covers only the write (see
        # admin.prepare_salt_rotation); redone under it if another process rotated meanwhile.
        prepared = admin.prepare_salt_rotation(
            self._store, fraction, now_ms, self._rng, at_least_one=True
        )
        with self._store.transaction() as conn:
            # Measured for the log line only (how long other writers waited on this one), so
            # the interval clock, not the injected wall clock that dates the rotation.
            locked_at = time.monotonic()
            if not self._may_rotate():
                return None
            if not salts_due(OperatorStore.salts_rotated_in(conn), now_ms):
                return None
            rotated = admin.rotate_salts_in(
                conn, fraction, now_ms, self._rng, at_least_one=True, prepared=prepared
            )
        _log.info(
            "salts_rotated_on_schedule",
            rotated=rotated,
            fraction=fraction,
            locked_ms=round((time.monotonic() - locked_at) * 1000),
        )
        return rotated

    @staticmethod
    def _enabled(keysets: Iterable[KeysetRow]) -> list[int]:
        return [ks.keyset_id for ks in keysets if ks.enabled]

    def _may_rotate(self) -> bool:
        """Called holding the write lock: False when a stop came while the check waited for
        it. Otherwise a stop from now on waits for the rotation (`stop`)."""
        self._rotating = True  # before the look at the stop, which `stop` sets first
        return not self._stop.is_set()

    def schedule(self) -> dict[str, int]:
        """When each scheduled rotation is next due (epoch s; now or earlier: at the next
        check), for the line logged at start."""
        due: dict[str, int] = {}
        if self._config.rotate_keys_every_s:
            newest = self._store.newest_key_created_s(MASTER_KEYSET_ID) or 0
            due["keys_due_at"] = newest + self._config.rotate_keys_every_s
        if self._config.rotate_salts_daily_fraction:
            rotated_ms = self._store.salts_rotated_ms() or 0
            due["salts_due_at"] = (rotated_ms + DAY_MS) // 1000
        return due

    def start(self) -> Rotator:
        self._thread.start()
        return self

    def _run(self) -> None:
        self.check()
        if self._stop.is_set():  # stopping already: the store may be closing under it
            return
        try:
            due = self.schedule()
        except Exception as exc:  # only the log line is lost; the checks go on
            _log.warning("rotation_schedule_unknown", error_type=type(exc).__name__)
        else:
            _log.info(
                "rotation_scheduled",
                rotate_keys_every_s=self._config.rotate_keys_every_s,
                rotate_salts_daily_fraction=self._config.rotate_salts_daily_fraction,
                **due,
            )
        while not self._stop.wait(self._config.rotation_check_interval_s):
            self.check()

    def begin_stop(self) -> None:
        """No rotation starts after this (called as the server's drain begins)."""
        self._stop.set()

    def stop(self) -> None:
        """Ends the checks: waits for one under way to rotate, commit and log, up to
        FINISH_WAIT_S, unless it is still waiting for another process's write lock."""
        self._stop.set()
        if self._thread.ident is None:
            return
        self._thread.join(STOP_WAIT_S)
        if self._thread.is_alive() and self._rotating:
            self._thread.join(FINISH_WAIT_S)
