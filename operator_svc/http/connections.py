"""The HTTP API's connections: how many it holds, and for how long outside a request.

aiohttp times out none of a request's phases by itself: a client that connects and says
nothing, or sends a request line or headers a byte at a time (slowloris), holds its connection,
a file descriptor and memory for as long as it likes, with no API key. A few hundred such
connections once exhausted the operator's file descriptors, and its gRPC port with them. So:

- at most `max_connections` at once: past that a new connection is closed as it opens;
- a connection outside a request handler (idle keep-alive, a request still arriving) for
  `idle_deadline_s` is closed, by a sweep once a second; a TLS handshake has as long.

Inside a handler, the body has a deadline of its own (the HTTP API's `_read`)."""

from __future__ import annotations

import asyncio
import ssl
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
# With TLS each connection holds some 290 KB from its accept (asyncio's TLS buffers): 300 MB at
# this cap.
MAX_TLS_CONNECTIONS = 1024
# How long a closing TLS connection waits for the client's close_notify (asyncio's default, 30
# s, held an idle connection 50 s in all).
TLS_SHUTDOWN_TIMEOUT_S = 2.0
SWEEP_INTERVAL_S = 1.0
# A refused connection is logged at most this often (a flood of them is one line, counted).
_REFUSED_LOG_INTERVAL_S = 10.0


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]  # every stream transport has abort()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted open from its accept to its loss. With
    TLS it is told of the connection only once the handshake is done (ConnectionGuard runs the
    handshake, so that one that fails is seen and the connection uncounted at once; asyncio's
    own TLS listener tells nobody)."""

    __slots__ = ("_eof", "_guard", "_pending", "inner", "made")

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self.inner = inner
        self._guard = guard
        self.made = False
        self._pending: list[bytes] = []  # what TLS decrypted before aiohttp was told
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.raw[self.inner] = transport  # what the sweep aborts, TLS or not
        if self._guard.tls is None:
            self.up(transport)
        else:
            self._guard.start_tls(self, transport)

    def up(self, transport: asyncio.BaseTransport) -> None:
        """The connection is ready for HTTP (accepted, or its TLS handshake done)."""
        self.made = True
        self.inner.connection_made(transport)
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            self.inner.data_received(data)
        if self._eof:
            self.inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.made:
            self.inner.data_received(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool | None:
        if self.made:
            return bool(self.inner.eof_received())
        self._eof = True
        return None

    def pause_writing(self) -> None:
        if self.made:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.made:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self)
        if self.made:
            self.inner.connection_lost(exc)


class ConnectionGuard:
    """Wraps an aiohttp `web.Server` (a protocol factory): `protocol` is the factory to listen
    with; `enter`/`leave` bracket each request's handler; `run` sweeps."""

    def __init__(
        self,
        server: web.Server,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_deadline_s: float = IDLE_DEADLINE_S,
        tls: ssl.SSLContext | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server = server
        # Listened on without TLS: the guard runs each handshake itself (start_tls), within
        # the idle deadline, and past the cap a connection is refused before any.
        self.tls = tls
        self._handshakes: set[asyncio.Task[None]] = set()
        self._max = max_connections
        self._idle_deadline_s = idle_deadline_s
        self._now = monotonic
        # connection (its aiohttp RequestHandler) -> when it last left a handler, or opened
        self._since: dict[Any, float] = {}
        self._busy: dict[Any, int] = {}  # connection -> requests of it in a handler now
        self._open: set[_Counted] = set()
        # connection (aiohttp's handler) -> its socket's transport (under TLS, if any)
        self.raw: dict[Any, asyncio.BaseTransport] = {}
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
        self._since[handler] = self._now()
        counted = _Counted(handler, self)
        self._open.add(counted)
        return counted

    def forget(self, counted: _Counted) -> None:
        self._open.discard(counted)
        self.raw.pop(counted.inner, None)

    def start_tls(self, counted: _Counted, transport: asyncio.BaseTransport) -> None:
        if self.tls is None:
            counted.up(transport)
            return
        handshake = self._handshake(counted, transport, self.tls)
        task = asyncio.get_running_loop().create_task(handshake)
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(
        self, counted: _Counted, transport: asyncio.BaseTransport, tls: ssl.SSLContext
    ) -> None:
        try:
            secured = await asyncio.get_running_loop().start_tls(
                transport,  # type: ignore[arg-type]  # an accepted stream transport
                counted,
                tls,
                server_side=True,
                ssl_handshake_timeout=self._idle_deadline_s,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S,
            )
        except BaseException as exc:  # refused, reset, timed out, or the loop stopping
            transport.abort()  # type: ignore[attr-defined]  # every stream transport has abort()
            self.forget(counted)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if secured is None:  # the connection went during the handshake
            self.forget(counted)
            return
        counted.up(secured)

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
        live = self._server.connections
        alive = set(live)
        for gone in [c for c in self._since if c not in alive]:
            del self._since[gone]
        closed = 0
        for connection in live:
            if connection in self._busy:
                continue
            since = self._since.setdefault(connection, now)
            if now - since < self._idle_deadline_s:
                continue
            # The socket's transport aborted, not the connection closed: a close waits for what
            # is still buffered to be sent (a client that never reads would hold it for ever),
            # and under TLS for the client's close_notify.
            raw = self.raw.pop(connection, None)
            if raw is not None:
                raw.abort()  # type: ignore[attr-defined]  # every stream transport has abort()
                closed += 1
        self.closed_idle += closed
        return closed

    async def run(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Sweeps every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()
