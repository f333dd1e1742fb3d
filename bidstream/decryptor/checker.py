"""Token verdicts for bid-stream decryptors. The raw UID2 is looked at (opt-out) and dropped
here: nothing this module returns carries it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

import structlog

from bidstream.decryptor.key_cache import KeyCache
from bidstream.decryptor.optouts import OptOutSet
from svc_common.clock import Clock
from svc_common.failure_log import FailureLog
from svc_common.tally import Tally
from uid2_crypto.tokens import DecryptionStatus, DecryptResult, TokenDecoder


class Verdict(Enum):
    VALID = "VALID"  # decrypted, current, not opted out
    EXPIRED = "EXPIRED"
    INVALID = "INVALID"  # forged, tampered, wrong domain or app, bad lifetime
    # Names a master or site key this reader does not hold, even after fetching keys early:
    # not shared with us (`sharing allow`), a key newer than the operator gave us, a token of
    # another operator or environment, or one crafted to name a key id. Sent on the wire as
    # INVALID is (the token is dropped): told apart in logs and /metrics.
    KEY_NOT_HELD = "KEY_NOT_HELD"
    OPTED_OUT = "OPTED_OUT"
    NO_KEYS = "NO_KEYS"  # no good keys yet: the token could not be checked
    # Decrypted, but the operator's opt-outs are not all in yet (just started): not vouched for.
    OPTOUTS_LOADING = "OPTOUTS_LOADING"


# Statuses that mean "the token names a key we do not hold": refresh early, then retry once.
_MISSING_KEY = (
    DecryptionStatus.NOT_AUTHORIZED_FOR_MASTER_KEY,
    DecryptionStatus.NOT_AUTHORIZED_FOR_KEY,
)
_NO_KEYS = (DecryptionStatus.NOT_INITIALIZED, DecryptionStatus.KEYS_NOT_SYNCED)
# Statuses newer keys (or their site data) may turn into a success: decrypted once more then.
_RETRIED = (*_MISSING_KEY, DecryptionStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED)

_log = structlog.get_logger("decryptor")

# At most one `tokens_naming_keys_not_held` line per this long (as ssp_svc.bidders' failures).
KEY_NOT_HELD_LOG_INTERVAL_S = 30.0


class _KeyNotHeldLog:
    """Tokens naming a key we do not hold may come with every impression (a site that stopped
    sharing with us): the first is logged at once, then at most one line per
    KEY_NOT_HELD_LOG_INTERVAL_S with the count since the last line and the last one's key id
    and status (a key id is no secret; the token is never logged). Tokens held back are written
    once their interval is over, at the next check whatever its verdict."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._log = FailureLog(
            _log,
            "tokens_naming_keys_not_held",
            every_s=KEY_NOT_HELD_LOG_INTERVAL_S,
            count_field="tokens_since_last",
        )

    def seen(self, status: DecryptionStatus, key_id: int | None) -> None:
        with self._lock:
            self._log.record({"key_id": key_id, "status": status.name}, self._monotonic())

    def tick(self) -> None:
        if self._log.held:  # read without the lock: the hot path's usual answer is "nothing held"
            with self._lock:
                self._log.tick(self._monotonic())


class TokenChecker:
    def __init__(
        self,
        keys: KeyCache,
        optouts: OptOutSet,
        clock: Clock,
        *,
        early_refresh_wait_s: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._optouts = optouts
        self._clock = clock
        self._early_wait_s = early_refresh_wait_s
        # Every verdict from 0, so an alert on one sees 0 rather than no series.
        self._verdicts: Tally[Verdict] = Tally(Verdict)
        self._not_held = _KeyNotHeldLog(monotonic)

    def verdict_counts(self) -> dict[Verdict, int]:
        """Tokens checked so far, per verdict (every verdict present), a copy."""
        return self._verdicts.snapshot()

    def check(self, token: str, domain_or_app: str | None, *, app: bool = False) -> Verdict:
        """`domain_or_app`: where the token is used, the page's domain or (`app`) the app's
        bundle id; client-side generated tokens must be used on their site's. A page on a
        subdomain of one of the site's domains is the site's page: the operator generated the
        token for it on the same rule (client-side generation accepts such an Origin)."""
        verdict = self._check(token, domain_or_app, app)
        self._verdicts.add(verdict)
        if verdict is not Verdict.KEY_NOT_HELD:
            self._not_held.tick()
        return verdict

    def _check(self, token: str, domain_or_app: str | None, app: bool) -> Verdict:
        seen = self._keys.generation
        result = self._decrypt(self._keys.decoder, token, domain_or_app, app)
        if result.status in _RETRIED:
            if result.status is DecryptionStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED:
                # Our site data may predate the domain or app (key_cache.SITE_DATA_REFRESH_GAP_S).
                generation = self._keys.request_site_data_refresh()
            elif self._keys.generation == seen and self._keys.may_be_new(result.missing_key_id):
                # A fetch is asked for (and waited for briefly) only for a key that may be new.
                generation = self._keys.request_early_refresh()
            else:
                generation = None
            if generation is not None:
                self._keys.wait_past(generation, self._early_wait_s)
            # Keys fetched since this decrypt began, ours or not, may decide it: tried again.
            if self._keys.generation > seen:
                result = self._decrypt(self._keys.decoder, token, domain_or_app, app)
        status = result.status
        if status is DecryptionStatus.SUCCESS:
            if result.raw_uid is not None and self._optouts.opted_out(result.raw_uid):
                return Verdict.OPTED_OUT
            if not self._optouts.loaded.is_set():
                return Verdict.OPTOUTS_LOADING
            return Verdict.VALID
        if status is DecryptionStatus.EXPIRED_TOKEN:
            return Verdict.EXPIRED
        if status in _NO_KEYS:
            # No keys at all (the operator was down at start): fetch at once, as for a key we
            # lack, rather than at the failure backoff's next try, up to a minute away. Not
            # waited for: with the operator still down every impression would pay the wait.
            self._keys.request_early_refresh(backing_off=True)
            return Verdict.NO_KEYS
        if status in _MISSING_KEY:
            self._not_held.seen(status, result.missing_key_id)
            return Verdict.KEY_NOT_HELD
        return Verdict.INVALID

    def _decrypt(
        self, decoder: TokenDecoder | None, token: str, domain_or_app: str | None, app: bool
    ) -> DecryptResult:
        if decoder is None:
            return DecryptResult(DecryptionStatus.NOT_INITIALIZED)
        return decoder.decrypt(
            token, self._clock.now_ms(), domain_or_app=domain_or_app or None, subdomains=not app
        )
