"""The HTTP API's connections: how many it holds, and for how long outside a request.

aiohttp times out none of a request's phases by itself: a client that connects and says
nothing, or sends a request line or headers a byte at a time (slowloris), holds its connection,
a file descriptor and memory for as long as it likes, with no API key. A few hundred such
connections once exhausted the operator's file descriptors, and its gRPC port with them. So:

- at most `max_connections` at once: past that a new connection is closed as it opens;
- a connection outside a request handler (idle keep-alive, a request still arriving) for
  `idle_deadline_s` is closed, by a sweep once a second.

Inside a handler, the body has a deadline of its own (the HTTP API's `_read`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

_log = structlog.get_logger("operator.http")

# A browser on a slow network sends its headers in well under this; an idle keep-alive
# connection is cheaper to open again than to hold.
IDLE_DEADLINE_S = 20.0
# Far above what one operator process serves at once (its clients' SDKs open a connection per
# call), far below the file-descriptor limit it raises itself to (svc_common.fd_limit).
MAX_CONNECTIONS = 4096
SWEEP_INTERVAL_S = 1.0
# A refused connection is logged at most this often (a flood of them is one line, counted).
_REFUSED_LOG_INTERVAL_S = 10.0


# A TLS connection whose handshake fails is never made nor lost to its protocol: counted open
# until asyncio's handshake timeout (60 s) is surely past.
_UNMADE_FORGOTTEN_AFTER_S = 75.0


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]  # every stream transport has abort()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted open from its creation to its loss.
    (aiohttp's own count starts only once a connection is made: after the TLS handshake, and a
    loop iteration after the accept, so a burst of accepts would all pass a cap on it.)"""

    __slots__ = ("_guard", "_inner", "created", "made")

    def __init__(self, inner: Any, guard: ConnectionGuard, created: float) -> None:
        self._inner = inner
        self._guard = guard
        self.created = created
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return bool(self._inner.eof_received())

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._open.discard(self)
        self._inner.connection_lost(exc)


class ConnectionGuard:
    """Wraps an aiohttp `web.Server` (a protocol factory): `protocol` is the factory to listen
    with; `enter`/`leave` bracket each request's handler; `run` sweeps."""

    def __init__(
        self,
        server: web.Server,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_deadline_s: float = IDLE_DEADLINE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server = server
        self._max = max_connections
        self._idle_deadline_s = idle_deadline_s
        self._now = monotonic
        # connection (its aiohttp RequestHandler) -> when it last left a handler, or opened
        self._since: dict[Any, float] = {}
        self._busy: dict[Any, int] = {}  # connection -> requests of it in a handler now
        self._open: set[_Counted] = set()
        self.refused = 0
        self.closed_idle = 0
        self._refused_logged_at = -_REFUSED_LOG_INTERVAL_S
        self._refused_unlogged = 0

    def protocol(self) -> asyncio.BaseProtocol:
        """A new connection's protocol: aiohttp's, or one that closes it when full."""
        if len(self._open) >= self._max:
            self.refused += 1
            self._refused_unlogged += 1
            now = self._now()
            if now - self._refused_logged_at >= _REFUSED_LOG_INTERVAL_S:
                _log.warning(
                    "http_connections_full", limit=self._max, refused=self._refused_unlogged
                )
                self._refused_logged_at, self._refused_unlogged = now, 0
            return _Refused()
        handler = self._server()
        now = self._now()
        self._since[handler] = now
        counted = _Counted(handler, self, now)
        self._open.add(counted)
        return counted

    @property
    def open(self) -> int:
        """Connections open now, counted as the cap counts them."""
        return len(self._open)

    def enter(self, connection: Any) -> None:
        self._busy[connection] = self._busy.get(connection, 0) + 1

    def leave(self, connection: Any) -> None:
        left = self._busy.get(connection, 1) - 1
        if left > 0:
            self._busy[connection] = left
        else:
            self._busy.pop(connection, None)
        self._since[connection] = self._now()

    def sweep(self) -> int:
        """Closes the connections idle past the deadline; how many it closed."""
        now = self._now()
        for unmade in [
            c for c in self._open if not c.made and now - c.created > _UNMADE_FORGOTTEN_AFTER_S
        ]:
            self._open.discard(unmade)
        live = self._server.connections
        alive = set(live)
        for gone in [c for c in self._since if c not in alive]:
            del self._since[gone]
        closed = 0
        for connection in live:
            if connection in self._busy:
                continue
            since = self._since.setdefault(connection, now)
            transport = connection.transport
            if now - since >= self._idle_deadline_s and transport is not None:
                connection.force_close()
                # Aborted, not closed: a close waits for what is still buffered to be sent, and
                # a client that never reads would hold its connection for ever.
                transport.abort()
                closed += 1
        self.closed_idle += closed
        return closed

    async def run(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Sweeps every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()
