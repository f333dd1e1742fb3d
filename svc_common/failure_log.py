"""Logging failures that come one per call (a bidder's auctions, the publisher's calls to the
operator and the SSP, tokens naming a key a decryptor lacks) without a line per failure: the
first failure at once, then at most one line per interval with the failures since (the last
one's fields). Failures held back are written once their interval is over, at the next `tick`
(the peer's next call, whatever its outcome), not at its next failure, which may be hours
later.

Not thread-safe: its owner holds a lock around `record` and `tick`. `svc_common.failure_streak`
is the counterpart for one recurring job that retries while its peer is down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# At most one line per peer (and failure kind) this often.
FAILURE_LOG_INTERVAL_S = 30.0


class FailureLog:
    def __init__(
        self,
        log: Any,
        event: str,
        *,
        every_s: float = FAILURE_LOG_INTERVAL_S,
        count_field: str = "failures_since_last",
    ) -> None:
        self._log = log
        self._event = event
        self._every_s = every_s
        self._count_field = count_field
        self._logged_at: float | None = None
        self._since = 0
        self._last: Mapping[str, Any] = {}

    def record(self, fields: Mapping[str, Any], now: float) -> None:
        """One failure, `fields` what may be logged of it (never a peer's message: see
        svc_common.errors.failure_fields); `now` in monotonic seconds."""
        self._since += 1
        self._last = dict(fields)
        self.tick(now)

    @property
    def held(self) -> bool:
        """Whether failures wait to be written (a plain read: a caller may look without its
        lock, then take it to `tick`)."""
        return self._since > 0

    def tick(self, now: float) -> None:
        """Writes the failures held back, if any, once their interval is over."""
        if not self._since:
            return
        if self._logged_at is not None and now - self._logged_at < self._every_s:
            return
        self._log.warning(self._event, **{self._count_field: self._since}, **self._last)
        self._logged_at, self._since = now, 0
