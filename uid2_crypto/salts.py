"""From an identity hash to a raw UID2: first-level hash, salt buckets, rotation (reference §3).

A SaltSet holds 2^20 buckets, so it is stored as a few flat buffers instead of a million objects:
salts as raw 32-byte values in one bytes blob, previous salts in another (all-zero = none), and
the rotation and refresh times (epoch ms) as ``array('q')``. The salt string that enters the hash
is the standard base64 of the 32 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import struct
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence

from uid2_crypto.identity import IdentityScope, IdentityType

BUCKET_COUNT = 1 << 20
SALT_BYTES = 32
# Buckets compared at once by SaltSet.changed_buckets.
_CHANGED_BLOCK = 64
DAY_MS = 86_400_000
DEFAULT_REFRESH_PERIOD_MS = 365 * DAY_MS
# A rotated bucket's previous raw UID2 stays answerable this long (identity map).
PREVIOUS_SALT_TTL_MS = 90 * DAY_MS

_NO_SALT = bytes(SALT_BYTES)
_META = struct.Struct("<Iq")  # format version, refresh period ms
_META_VERSION = 1
_b64encode = base64.b64encode
_sha256 = hashlib.sha256


def first_level_hash(identity_hash: bytes, first_level_salt: str) -> bytes:
    """SHA-256(ascii(base64(identity hash)) ‖ first-level salt): the opt-out and refresh key."""
    return _sha256(_b64encode(identity_hash) + first_level_salt.encode("utf-8")).digest()


def bucket_index(flh: bytes) -> int:
    return (flh[0] << 12) | (flh[1] << 4) | (flh[2] & 0x0F)


def raw_uid2(flh: bytes, salt: str) -> bytes:
    """The 32-byte (v2 form) raw UID2 of a first-level hash under its bucket's salt."""
    return _sha256(_b64encode(flh) + salt.encode("ascii")).digest()


def raw_uid2_v3(flh: bytes, salt: str, scope: IdentityScope, identity_type: IdentityType) -> bytes:
    """The 33-byte raw UID2: one byte of scope and type in front of the v2 form."""
    return bytes(((int(scope) << 4) | (int(identity_type) << 2),)) + raw_uid2(flh, salt)


def _le_bytes(a: array[int]) -> bytes:
    # Blobs are little-endian on disk whatever the host, so a copy moves between machines.
    if sys.byteorder == "little":
        return a.tobytes()
    b = array("q", a)
    b.byteswap()
    return b.tobytes()


def _le_array(data: bytes) -> array[int]:
    a = array("q")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def latest_rotation_ms(rotated_at_blob: bytes) -> int:
    """The latest bucket rotation time in a stored `rotated_at` blob (`SaltSet.to_blobs`);
    0 when no bucket was ever rotated."""
    return max(_le_array(rotated_at_blob), default=0)


def _spread(rng: Callable[[int], bytes], count: int, base_ms: int, span_ms: int) -> array[int]:
    """``count`` times uniform (up to a negligible modulo bias) in [base_ms, base_ms + span_ms)."""
    raw = array("Q")
    raw.frombytes(rng(8 * count))
    if len(raw) != count:
        raise ValueError("rng returned the wrong number of bytes")
    return array("q", [base_ms + x % span_ms for x in raw])


class SaltSet:
    """Immutable salt buckets. Lookups are O(1); ``rotate`` returns a new set."""

    __slots__ = ("_due_first", "_period_ms", "_previous", "_refresh_from", "_rotated_at", "_salts")

    def __init__(
        self,
        salts: bytes,
        previous: bytes,
        rotated_at: array[int],
        refresh_from: array[int],
        refresh_period_ms: int = DEFAULT_REFRESH_PERIOD_MS,
    ) -> None:
        count = len(salts) // SALT_BYTES
        if (
            count == 0
            or len(salts) != count * SALT_BYTES
            or len(previous) != len(salts)
            or len(rotated_at) != count
            or len(refresh_from) != count
            or rotated_at.typecode != "q"
            or refresh_from.typecode != "q"
        ):
            raise ValueError("inconsistent salt set buffers")
        if refresh_period_ms <= 0:
            raise ValueError("refresh period must be positive")
        self._salts = bytes(salts)
        self._previous = bytes(previous)
        self._rotated_at = rotated_at
        self._refresh_from = refresh_from
        self._period_ms = refresh_period_ms
        self._due_first: int | None = None

    @classmethod
    def generate(
        cls,
        count: int,
        rng: Callable[[int], bytes],
        now_ms: int,
        refresh_period_ms: int = DEFAULT_REFRESH_PERIOD_MS,
    ) -> SaltSet:
        """Fresh salts; refresh_from spread uniformly over one period so ~1/365 come due a day."""
        if count <= 0 or refresh_period_ms <= 0:
            raise ValueError("count and refresh period must be positive")
        salts = rng(SALT_BYTES * count)
        if len(salts) != SALT_BYTES * count:
            raise ValueError("rng returned the wrong number of bytes")
        refresh_from = _spread(rng, count, now_ms, refresh_period_ms)
        return cls(
            salts,
            bytes(SALT_BYTES * count),
            array("q", bytes(8 * count)),
            refresh_from,
            refresh_period_ms,
        )

    def __len__(self) -> int:
        return len(self._rotated_at)

    @property
    def refresh_period_ms(self) -> int:
        return self._period_ms

    def salt(self, index: int) -> str:
        start = index * SALT_BYTES
        if not 0 <= index < len(self._rotated_at):
            raise IndexError("salt bucket index out of range")
        return _b64encode(self._salts[start : start + SALT_BYTES]).decode("ascii")

    def previous_salt(self, index: int, now_ms: int) -> str | None:
        """The salt before the last rotation, while that rotation is at most 90 days old."""
        rotated = self._rotated_at[index]
        if rotated == 0 or now_ms - rotated > PREVIOUS_SALT_TTL_MS:
            return None
        return self.last_previous_salt(index)

    def last_previous_salt(self, index: int) -> str | None:
        """The salt before the last rotation, however long ago that was; None if never rotated.
        Tokens issued under it carry the raw UID2 it gives until they expire."""
        start = index * SALT_BYTES
        prev = self._previous[start : start + SALT_BYTES]
        if prev == _NO_SALT:
            return None
        return _b64encode(prev).decode("ascii")

    def rotated_at(self, index: int) -> int:
        return self._rotated_at[index]

    def refresh_from(self, index: int) -> int:
        return self._refresh_from[index]

    def first_due_ms(self) -> int:
        """The earliest refresh_from of any bucket (epoch ms): when the first salt comes due
        for rotation, or came due, if that is past. Scanned once per set (20 ms for 2^20
        buckets), on first use rather than at load, so start-up does not pay for it."""
        if self._due_first is None:
            self._due_first = min(self._refresh_from)
        return self._due_first

    def rotate(
        self, fraction: float, rng: Callable[[int], bytes], now_ms: int, *, min_age_ms: int = 0
    ) -> SaltSet:
        """Rotate ``fraction`` of the buckets, those due soonest (oldest) first
        (`rotate_counted`)."""
        return self.rotate_counted(fraction, rng, now_ms, min_age_ms=min_age_ms)[0]

    def rotate_counted(
        self, fraction: float, rng: Callable[[int], bytes], now_ms: int, *, min_age_ms: int = 0
    ) -> tuple[SaltSet, int]:
        """Rotate ``fraction`` of the buckets, those due soonest (oldest) first; returns the new
        set and how many rotated. A bucket rotated less than `min_age_ms` ago is left out:
        tokens issued under the salt before its last rotation may still be live, and a second
        rotation would drop that salt, and with it the raw UID2 those tokens carry, from what
        an opt-out is published under (the current salt and the one before)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        count = len(self)
        k = min(count, round(fraction * count))
        if k == 0:
            return self, 0
        due = self._refresh_from.__getitem__
        if min_age_ms > 0:
            cutoff = now_ms - min_age_ms
            when = self._rotated_at
            candidates: Sequence[int] = [i for i in range(count) if when[i] <= cutoff]
        else:
            candidates = range(count)
        k = min(k, len(candidates))
        if k == 0:
            return self, 0
        chosen = (
            heapq.nsmallest(k, candidates, key=due)
            if k * 8 < len(candidates)
            else sorted(candidates, key=due)[:k]
        )
        fresh = rng(SALT_BYTES * k)
        if len(fresh) != SALT_BYTES * k:
            raise ValueError("rng returned the wrong number of bytes")
        salts = bytearray(self._salts)
        previous = bytearray(self._previous)
        rotated_at = array("q", self._rotated_at)
        refresh_from = array("q", self._refresh_from)
        next_due = now_ms + self._period_ms
        for n, i in enumerate(chosen):
            lo = i * SALT_BYTES
            hi = lo + SALT_BYTES
            previous[lo:hi] = salts[lo:hi]
            salts[lo:hi] = fresh[n * SALT_BYTES : (n + 1) * SALT_BYTES]
            rotated_at[i] = now_ms
            refresh_from[i] = next_due
        rotated = SaltSet(bytes(salts), bytes(previous), rotated_at, refresh_from, self._period_ms)
        return rotated, k

    def changed_buckets(self, other: SaltSet) -> list[int]:
        """The buckets whose salt differs from `other`'s (every bucket if the sets differ in
        size): those a rotation between the two touched, the only ones whose raw UID2s (under
        the salt, or the salt before it) changed. Compared a block of buckets at a time
        (a byte comparison in C), so a set that differs in a few thousand buckets of 2^20 costs
        milliseconds."""
        count = len(self)
        if len(other) != count:
            return list(range(count))
        mine, theirs = self._salts, other._salts
        block = _CHANGED_BLOCK * SALT_BYTES
        out: list[int] = []
        for lo in range(0, len(mine), block):
            if mine[lo : lo + block] == theirs[lo : lo + block]:
                continue
            first = lo // SALT_BYTES
            for i in range(first, min(count, first + _CHANGED_BLOCK)):
                at = i * SALT_BYTES
                if mine[at : at + SALT_BYTES] != theirs[at : at + SALT_BYTES]:
                    out.append(i)
        return out

    def to_blobs(self) -> dict[str, bytes]:
        return {
            "meta": _META.pack(_META_VERSION, self._period_ms),
            "salts": self._salts,
            "previous": self._previous,
            "rotated_at": _le_bytes(self._rotated_at),
            "refresh_from": _le_bytes(self._refresh_from),
        }

    @classmethod
    def from_blobs(cls, d: Mapping[str, bytes]) -> SaltSet:
        try:
            version, period = _META.unpack(d["meta"])
            if version != _META_VERSION:
                raise ValueError("unsupported salt set format")
            return cls(
                d["salts"],
                d["previous"],
                _le_array(d["rotated_at"]),
                _le_array(d["refresh_from"]),
                period,
            )
        except (KeyError, struct.error) as exc:
            raise ValueError("malformed salt set blobs") from exc
