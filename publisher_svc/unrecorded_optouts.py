"""Opt-outs the operator answered that the publisher's store refused to record (a full or
read-only disk, another process holding the store past its busy timeout).

The operator's answer stands whatever the store does: held here, an opt-out is honoured by
every path at once (no token served, no refresh asked for, no generate for that DII again) and
written by `Publisher.record_unrecorded_optouts` when the store takes writes again. Lost only if
the process ends before then; the operator still holds the opt-out, so a later login or refresh
of that DII is answered OPTOUT again.

Keyed as the store keys identities: by the publisher's user id (one site per publisher), each
with the DII hashes opted out for that user; "" holds those of a client-side refresh, which
names no user. Bounded by `limit` DII hashes: entries exist only while the store refuses writes
and the operator answers OPTOUT, so a few at most in practice; a caller finding it full answers
as it did before the set existed."""

from __future__ import annotations

import threading
from collections.abc import Mapping

# Measured: 0.6 KB a hash at most (its user id up to 256 chars), so 6 MB full; a login's
# holds_dii scan of a full set, 0.3 ms.
DEFAULT_LIMIT = 10_000


class UnrecordedOptOuts:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError("limit must not be negative")
        self.limit = limit
        self._lock = threading.Lock()
        # user id ("" for none) -> {DII hash -> when the operator answered, ms}
        self._by_user: dict[str, dict[str, int]] = {}
        self._size = 0

    def add(self, user_id: str, dii_key: str, at_ms: int) -> bool:
        """Holds the operator's opt-out of `dii_key`, answered at `at_ms` for `user_id`. False
        when full: nothing is held, and the caller cannot count on it being honoured."""
        with self._lock:
            held = self._by_user.get(user_id)
            if held is not None and dii_key in held:
                return True  # the first answer's time stands
            if self._size >= self.limit:
                return False
            self._by_user.setdefault(user_id, {})[dii_key] = at_ms
            self._size += 1
            return True

    def holds_user(self, user_id: str) -> bool:
        """Whether the user has an opt-out waiting to be recorded."""
        with self._lock:
            return bool(user_id) and user_id in self._by_user

    def holds_dii(self, dii_key: str) -> bool:
        """Whether the DII has an opt-out waiting to be recorded, for any user. A scan: bounded
        by `limit`, and instant while nothing is held (the usual case)."""
        with self._lock:
            return any(dii_key in held for held in self._by_user.values())

    def of_user(self, user_id: str) -> dict[str, int]:
        """A copy of the user's: DII hash -> when answered."""
        with self._lock:
            return dict(self._by_user.get(user_id, {}))

    def users(self) -> list[str]:
        with self._lock:
            return list(self._by_user)

    def forget(self, user_id: str, recorded: Mapping[str, int]) -> None:
        """Drops what the store has now recorded for the user; one held since stays."""
        with self._lock:
            held = self._by_user.get(user_id)
            if held is None:
                return
            for dii_key in recorded:
                if held.pop(dii_key, None) is not None:
                    self._size -= 1
            if not held:
                del self._by_user[user_id]

    def __len__(self) -> int:
        """DII hashes held."""
        with self._lock:
            return self._size
