"""Logging a recurring job's run of failures (a stream that keeps breaking while its peer is
down) without a line per retry: the first failure at once, then at most one line per interval
with the count so far, and one line when the job works again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from svc_common.errors import failure_fields


class FailureStreak:
    def __init__(
        self,
        log: Any,
        event: str,
        recovered_event: str,
        *,
        every_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._event = event
        self._recovered_event = recovered_event
        self._every_s = every_s
        self._monotonic = monotonic
        self.failures = 0
        self._logged_at = 0.0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        now = self._monotonic()
        if self.failures == 1 or now - self._logged_at >= self._every_s:
            self._logged_at = now
            self._log.warning(self._event, failures=self.failures, **failure_fields(exc))

    def succeeded(self) -> None:
        if self.failures:
            self._log.info(self._recovered_event, failures=self.failures)
            self.failures = 0
