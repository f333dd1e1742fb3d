"""Identity map: DIIs -> raw UID2s (reference §3, §7).

Entry point: `IdentityMapper(state, clock).map_identity(client, items) -> list[MappedIdentity]`
(MAPPER role; at most 5,000 items, more is INVALID_ARGUMENT TOO_MANY_ITEMS). Each answer, in
input order, carries the raw UID2, its bucket, the bucket's refresh_from, and the raw UID2 under
the bucket's previous salt while that rotation is at most 90 days old, or an unmapped reason
(opt-out, invalid identifier).

`buckets_since(client, since_ms)` (MAPPER) lists the salt buckets rotated after a time, for the
HTTP API's /v2/identity/buckets (callers re-map the DII of those buckets)."""

from __future__ import annotations

import base64
import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from operator_svc.domain.auth import require_role
from operator_svc.domain.dii import KINDS
from operator_svc.domain.state import Client, OperatorState
from svc_common.clock import Clock
from svc_common.errors import invalid_argument
from uid2_crypto.errors import InvalidIdentifierError
from uid2_crypto.identity import identity_hash
from uid2_crypto.salts import SaltSet, bucket_index, first_level_hash, raw_uid2

MAX_ITEMS = 5000


class UnmappedReason(Enum):
    NONE = ""
    OPTOUT = "optout"
    INVALID_IDENTIFIER = "invalid identifier"


@dataclass(frozen=True, slots=True)
class MappedIdentity:
    # Raw UID2s stay out of repr: they are the user's identifier.
    raw_uid: str = field(default="", repr=False)
    bucket_id: str = ""
    refresh_from: int = 0
    previous_raw_uid: str = field(default="", repr=False)
    unmapped: UnmappedReason = UnmappedReason.NONE


_INVALID = MappedIdentity(unmapped=UnmappedReason.INVALID_IDENTIFIER)
_OPTOUT = MappedIdentity(unmapped=UnmappedReason.OPTOUT)


def check_batch_size(n: int) -> None:
    if n > MAX_ITEMS:
        raise invalid_argument("TOO_MANY_ITEMS", f"at most {MAX_ITEMS} items per call")


class IdentityMapper:
    def __init__(self, state: OperatorState, clock: Clock) -> None:
        self._state = state
        self._clock = clock
        # (salt set, its rotated buckets as (rotated_at ms, bucket) sorted): built once per
        # salt snapshot, so a buckets query is a bisect, not a scan of 2^20 buckets.
        self._rotations: tuple[SaltSet, list[tuple[int, int]]] | None = None
        self._rotations_lock = threading.Lock()

    def _rotation_index(self) -> list[tuple[int, int]]:
        salts = self._state.salts
        cached = self._rotations
        if cached is not None and cached[0] is salts:
            return cached[1]
        with self._rotations_lock:
            cached = self._rotations
            if cached is not None and cached[0] is salts:
                return cached[1]
            rotated_at = salts.rotated_at
            index = sorted((ts, b) for b in range(len(salts)) if (ts := rotated_at(b)) > 0)
            self._rotations = (salts, index)
            return index

    def buckets_since(self, client: Client, since_ms: int) -> list[tuple[str, int]]:
        """(bucket id, rotated_at ms) of every bucket whose salt rotated after `since_ms`,
        oldest rotation first."""
        require_role(client, "MAPPER")
        if since_ms < 0:
            raise invalid_argument("INVALID_SINCE", "since must not be negative")
        index = self._rotation_index()
        start = bisect.bisect_right(index, (since_ms, 1 << 62))
        return [(str(b), ts) for ts, b in index[start:]]

    def map_identity(
        self, client: Client, items: Sequence[tuple[str, str]]
    ) -> list[MappedIdentity]:
        require_role(client, "MAPPER")
        check_batch_size(len(items))
        state = self._state
        salts = state.salts
        salt_of = salts.salt
        optouts = state.optouts
        tests = state.test_identities
        fls = state.first_level_salt
        now = self._clock.now_ms()
        b64 = base64.b64encode
        out: list[MappedIdentity] = []
        append = out.append
        for kind, value in items:
            if kind not in KINDS:
                append(_INVALID)
                continue
            try:
                _, ih = identity_hash(kind, value)
            except InvalidIdentifierError:
                append(_INVALID)
                continue
            flh = first_level_hash(ih, fls)
            if flh in tests.always_optout or (
                flh not in tests.never_optout and optouts.opted_out_at(flh) is not None
            ):
                append(_OPTOUT)
                continue
            bucket = bucket_index(flh)
            previous = salts.previous_salt(bucket, now)
            append(
                MappedIdentity(
                    raw_uid=b64(raw_uid2(flh, salt_of(bucket))).decode("ascii"),
                    bucket_id=str(bucket),
                    refresh_from=salts.refresh_from(bucket),
                    previous_raw_uid=(
                        b64(raw_uid2(flh, previous)).decode("ascii") if previous else ""
                    ),
                )
            )
        return out
