"""Opt-outs: record, query, stream (reference §3, §7).

Entry points on `OptOutService(state, store, clock)`:
- `opt_out(client, kind, value) -> int` (OPTOUT role): durable (synced SQLite commit) before
  it returns, then visible at once to this process's generate, refresh and map; other
  processes on the same data dir see it within their sync interval. Returns the first opt-out
  time (epoch ms) of that user.
- `opt_out_status(client, raw_uids) -> list[(raw_uid, opted_out_at)]` (MAPPER, OPTOUT or
  ID_READER; at most 5,000 raw UID2s in 44-character standard base64).
- `watch(client, since_ms, is_active) -> Iterator[(raw_uid, opted_out_at) | BACKLOG_SENT]`
  (ID_READER): the backlog at or after `since_ms`, then `BACKLOG_SENT` once, then new opt-outs
  as they are recorded, until `is_active()` turns false or the service closes.

Opt-outs are keyed by first-level hash, so they survive salt rotation; raw UID2s are those
under the current salts."""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Generator, Iterator, Sequence

from operator_svc.domain.auth import has_role, require_role
from operator_svc.domain.dii import dii_flh
from operator_svc.domain.mapping import check_batch_size
from operator_svc.domain.state import Client, OperatorState, raw_uids
from operator_svc.store import OperatorStore, OptOutRow
from svc_common.clock import Clock
from svc_common.errors import invalid_argument, resource_exhausted, unauthenticated

WATCH_POLL_S = 0.5
# How often a long backlog replay looks up from its work to see whether the call is still on.
_CHECK_EVERY = 256
# Marks the end of the backlog in `watch`: everything on record when the stream opened is out.
BACKLOG_SENT = None
# Open WatchOptOuts streams one participant (client name) may hold: the server-wide cap
# (server.MAX_STREAMS, 256) must not be one reader's to fill, or no other SSP or DSP could load
# or resume its opt-outs. An SSP or DSP runs several decryptor processes on one key.
MAX_WATCH_STREAMS_PER_CLIENT = 16


def _end_if(revoked: bool) -> None:
    if revoked:
        raise unauthenticated(
            "CLIENT_DISABLED", "the API key was disabled while the stream was open"
        )


def _raw_uid_bytes(raw_uid: str) -> bytes | None:
    """The 32 bytes of a raw UID2 in 44-character standard base64; None if it is not one."""
    if len(raw_uid) == 44:
        try:
            raw = binascii.a2b_base64(raw_uid, strict_mode=True)
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) == 32:
            return raw
    return None


class OptOutService:
    def __init__(
        self,
        state: OperatorState,
        store: OperatorStore,
        clock: Clock,
        *,
        max_streams_per_client: int = MAX_WATCH_STREAMS_PER_CLIENT,
    ) -> None:
        self._state = state
        self._store = store
        self._clock = clock
        self._max_streams = max_streams_per_client
        # Per client, the `is_active` of each open stream: one whose call has ended (the
        # client went away) no longer counts, though its thread may take up to WATCH_POLL_S to
        # notice, so a reconnect after a break is not refused meanwhile.
        self._streams: dict[str, list[Callable[[], bool]]] = {}
        self._streams_lock = threading.Lock()

    def opt_out(self, client: Client, kind: str, value: str) -> int:
        require_role(client, "OPTOUT")
        _, flh = dii_flh(kind, value, self._state.first_level_salt)
        seq, opted_out_at = self._store.add_optout(flh, self._clock.now_ms)
        self._state.optouts.add([OptOutRow(seq, flh, opted_out_at)])
        return opted_out_at

    def opt_out_status(
        self, client: Client, raw_uids: Sequence[str], *, skip_malformed: bool = False
    ) -> list[tuple[str, int]]:
        """The opted-out ones among `raw_uids`, with when. SHARER as the official operator
        allows it (participants check before sharing), OPTOUT too. `skip_malformed`: a string
        that is no raw UID2 is simply not opted out (the official HTTP API's answer), rather
        than INVALID_ARGUMENT for the whole batch."""
        require_role(client, "MAPPER", "SHARER", "OPTOUT", "ID_READER")
        check_batch_size(len(raw_uids))
        index = self._state.optouts
        out: list[tuple[str, int]] = []
        for raw_uid in raw_uids:
            raw = _raw_uid_bytes(raw_uid)
            if raw is None:
                if skip_malformed:
                    continue
                raise invalid_argument(
                    "INVALID_RAW_UID", "raw UID2s are 44-character standard base64"
                )
            ts = index.raw_opted_out_at(raw)
            if ts is not None:
                out.append((raw_uid, ts))
        return out

    def watch(
        self, client: Client, since_ms: int, is_active: Callable[[], bool]
    ) -> Generator[tuple[str, int] | None, None, None]:
        require_role(client, "ID_READER")
        if since_ms < 0:
            raise invalid_argument("INVALID_SINCE", "since must not be negative")
        return self._held_watch(client, since_ms, is_active)

    def open_streams(self, client_name: str) -> int:
        with self._streams_lock:
            return len(self._streams.get(client_name, ()))

    def all_open_streams(self) -> int:
        """The WatchOptOuts streams open now, every client's (/metrics): a decryptor that
        drops away, or a fleet nearing the per-client or per-process cap, shows here."""
        with self._streams_lock:
            return sum(len(held) for held in self._streams.values())

    def _revoked(self, key_id: str) -> bool:
        """The key was disabled, removed or lost ID_READER since the stream opened."""
        client = self._state.clients.get(key_id)
        return client is None or client.disabled or not has_role(client, "ID_READER")

    def _held_watch(
        self, client: Client, since_ms: int, is_active: Callable[[], bool]
    ) -> Generator[tuple[str, int] | None, None, None]:
        client_name = client.name
        # Taken when the stream starts and given back however it ends (generator close too).
        with self._streams_lock:
            held = self._streams.setdefault(client_name, [])
            if sum(1 for active in held if active()) >= self._max_streams:
                if not held:
                    del self._streams[client_name]
                raise resource_exhausted(
                    "TOO_MANY_STREAMS_FOR_CLIENT",
                    f"a client may hold at most {self._max_streams} opt-out streams at once",
                )
            held.append(is_active)
        try:
            yield from self._watch(since_ms, is_active, lambda: self._revoked(client.key_id))
        finally:
            with self._streams_lock:
                held = self._streams[client_name]
                held.remove(is_active)
                if not held:
                    del self._streams[client_name]

    def _watch(
        self, since_ms: int, is_active: Callable[[], bool], revoked: Callable[[], bool]
    ) -> Iterator[tuple[str, int] | None]:
        """The key is checked at the start only by the edge; a stream lives for days, so it is
        checked again here, every WATCH_POLL_S, and a disabled key's stream ends UNAUTHENTICATED
        within that."""
        index = self._state.optouts
        # Every event before it is older than `since`: the loop below would skip them all.
        position = index.first_position_from(since_ms)
        backlog = True
        while True:
            events, position = index.events_from(position)
            salts = self._state.salts
            for n, (ts, flh) in enumerate(events, 1):
                # `since` bounds the backlog only. An opt-out this process learns of later is
                # new to the reader whatever its time: one another process recorded arrives
                # after later-stamped ones, and dropped by a reader's resume point it was never
                # sent to that reader at all.
                if not backlog or ts >= since_ms:
                    # What GetOptOutStatus matches too: the current salt's raw UID2 and the
                    # previous salt's, which tokens issued before the last rotation carry.
                    for raw in raw_uids(flh, salts):
                        yield base64.b64encode(raw).decode("ascii"), ts
                # A replay of a long backlog must still end promptly on cancel or shutdown.
                if n % _CHECK_EVERY == 0 and (not is_active() or index.closed):
                    return
            if backlog:
                backlog = False
                yield BACKLOG_SENT
            while not index.wait_beyond(position, WATCH_POLL_S):
                if not is_active() or index.closed:
                    return
                _end_if(revoked())
            if not is_active() or index.closed:
                return
            _end_if(revoked())
