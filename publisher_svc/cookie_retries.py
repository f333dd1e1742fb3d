"""When a client-side identity's failed refresh may be tried again by an impression, and
which identities' refreshes the operator answered OPTOUT.

In server mode the retry time of a failed refresh is stored with the identity. A client-side
identity lives in the user's cookie, which the publisher cannot write when the refresh fails,
so without this every impression of that cookie would call a failing operator again (three
tries each). Held in memory, keyed by a digest of the cookie's refresh token (never the token
itself), bounded: past `limit` the oldest entry goes, and that cookie is tried at its next
impression, as before. A restart forgets them: the next impression tries once, then backs off
again.

Each of the two is bounded by `limit` (about 2 MB each, full). The opt-outs matter because an
impression waits for a refresh only so long (`--serve-refresh-budget`): an OPTOUT that comes
later reaches no caller, and the cookie, which the publisher cannot change, would go on
carrying the opted-out user's token into every impression until it expired."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from svc_common.backoff import Backoff
from svc_common.clock import Clock

DEFAULT_LIMIT = 10_000  # 16-byte keys: about 2 MB full


class CookieRetries:
    def __init__(self, clock: Clock, limit: int = DEFAULT_LIMIT) -> None:
        self._clock = clock
        self.limit = limit
        self._lock = threading.Lock()
        # digest -> (failed attempts, epoch ms before which no refresh is tried), as the store
        # keeps a server-side identity's
        self._failed: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        # digests of refresh tokens whose refresh ended the identity
        self._ended: OrderedDict[bytes, None] = OrderedDict()

    @staticmethod
    def _key(refresh_token: str) -> bytes:
        return hashlib.blake2b(refresh_token.encode(), digest_size=16).digest()

    def waiting(self, refresh_token: str) -> bool:
        """Whether a refresh of this cookie failed and its retry is not due yet."""
        with self._lock:
            entry = self._failed.get(self._key(refresh_token))
        return entry is not None and self._clock.now_ms() < entry[1]

    def failed(self, refresh_token: str, backoff: Backoff) -> None:
        """A refresh of this cookie failed: the next waits as `backoff` says."""
        key = self._key(refresh_token)
        with self._lock:
            attempts = self._failed.pop(key, (0, 0))[0]
            self._failed[key] = (
                attempts + 1,
                backoff.next_attempt_ms(attempts, self._clock.now_ms()),
            )
            while len(self._failed) > self.limit:
                self._failed.popitem(last=False)

    def succeeded(self, refresh_token: str) -> None:
        with self._lock:
            self._failed.pop(self._key(refresh_token), None)

    def end(self, refresh_token: str) -> None:
        """The operator answered this cookie's refresh OPTOUT: impressions send no token of it."""
        key = self._key(refresh_token)
        with self._lock:
            self._failed.pop(key, None)
            self._ended[key] = None
            while len(self._ended) > self.limit:
                self._ended.popitem(last=False)

    def ended(self, refresh_token: str) -> bool:
        with self._lock:
            return self._key(refresh_token) in self._ended

    def __len__(self) -> int:
        """Cookies whose refresh failed, waiting to be tried again."""
        with self._lock:
            return len(self._failed)
