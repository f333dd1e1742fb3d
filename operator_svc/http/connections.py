"""The HTTP API's connections: how many it holds, and for how long outside a request.

aiohttp times out none of a request's phases by itself: a client that connects and says
nothing, or sends a request line or headers a byte at a time (slowloris), holds its connection,
a file descriptor and memory for as long as it likes, with no API key. A few hundred such
connections once exhausted the operator's file descriptors, and its gRPC port with them. So:

- at most `max_connections` at once: past that a new connection is closed as it opens;
- a connection outside a request handler (idle keep-alive, a request still arriving) for
  `idle_deadline_s` is closed, by a sweep once a second; a TLS handshake has as long.

Inside a handler, the body has a deadline of its own (the HTTP API's `_read`).

The guard stays off the data path: a plain connection is aiohttp's own protocol from its
accept, and a TLS one is handed to it once its handshake is done. The guard learns of a
connection's start and end from aiohttp's server (its `connection_made`/`connection_lost`, which
every connection's handler calls). An earlier version put a proxy protocol in front of every
connection: one more Python call per chunk of data, some 5% of the server's CPU per request."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web, web_protocol

from operator_svc.http.errors import CLIENT_ERROR, ERROR

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


class _Connection:
    """One connection counted against the cap, from its accept to its loss."""

    __slots__ = ("busy", "raw", "since")

    def __init__(self, since: float) -> None:
        self.since = since  # when it opened, or a request of it last left its handler
        self.busy = 0  # requests of it in a handler now
        # The socket's transport (under TLS, if any): what the sweep aborts. None until the
        # connection is made.
        self.raw: asyncio.BaseTransport | None = None


class _Handshaking(asyncio.Protocol):
    """A TLS connection until its handshake is done (ConnectionGuard runs it, so that one that
    fails is seen and the connection uncounted at once; asyncio's own TLS listener tells
    nobody). Then aiohttp's protocol takes the connection over, and this steps out of its
    path. What TLS decrypted before that is kept and handed on."""

    __slots__ = ("_eof", "_guard", "_pending", "handler", "lost", "made", "record")

    def __init__(self, handler: Any, record: _Connection, guard: ConnectionGuard) -> None:
        self.handler = handler
        self.record = record
        self._guard = guard
        self._pending: list[bytes] = []
        self._eof = False
        self.lost = False
        self.made = False  # handed to aiohttp's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.record.raw = transport
        self._guard.start_tls(self, transport)

    def up(self, secured: asyncio.BaseTransport) -> None:
        """The handshake is done: aiohttp's protocol is told, and gets what came since."""
        if self.lost:  # gone between the handshake and now: aiohttp never saw it
            self._guard.forget(self.handler)
            return
        self.made = True
        secured.set_protocol(self.handler)
        self.handler.connection_made(secured)
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            self.handler.data_received(data)
        if self._eof:
            self.handler.eof_received()

    # What asyncio scheduled for this protocol before the hand-over (its TLS layer calls
    # connection_lost through call_soon) may still arrive after it: passed on.
    def data_received(self, data: bytes) -> None:
        if self.made:
            self.handler.data_received(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool | None:
        if self.made:
            return bool(self.handler.eof_received())
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.made:
            self.handler.connection_lost(exc)
        else:
            self.lost = True


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
        # aiohttp's handler of each connection counted -> what the guard knows of it
        self._connections: dict[Any, _Connection] = {}
        self.refused = 0
        self.closed_idle = 0
        self._refused_logged_at = -_REFUSED_LOG_INTERVAL_S
        self._refused_unlogged = 0
        # Told by every connection's handler (aiohttp's RequestHandler calls its server's
        # methods). Wrapped on this instance: web.Server offers no hook of its own, and the
        # AppRunner that makes it is what gives the app its start-up and shutdown.
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            record = self._connections.get(handler)
            if record is not None and record.raw is None:  # plain; TLS knows its socket
                record.raw = transport

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self._connections.pop(handler, None)

        server.connection_made = connection_made  # type: ignore[method-assign]  # see above
        server.connection_lost = connection_lost  # type: ignore[method-assign]  # see above

    def protocol(self) -> asyncio.BaseProtocol:
        """A new connection's protocol: aiohttp's, or one that closes it when full."""
        if len(self._connections) >= self._max:
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
        _answer_errors_in_json(handler)
        record = _Connection(self._now())
        self._connections[handler] = record
        if self.tls is None:
            return handler
        return _Handshaking(handler, record, self)

    def forget(self, handler: Any) -> None:
        self._connections.pop(handler, None)

    def start_tls(self, handshaking: _Handshaking, transport: asyncio.BaseTransport) -> None:
        if self.tls is None:  # never: only a TLS guard makes _Handshaking
            raise RuntimeError("start_tls on a guard without TLS")
        handshake = self._handshake(handshaking, transport, self.tls)
        task = asyncio.get_running_loop().create_task(handshake)
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(
        self, handshaking: _Handshaking, transport: asyncio.BaseTransport, tls: ssl.SSLContext
    ) -> None:
        try:
            secured = await asyncio.get_running_loop().start_tls(
                transport,  # type: ignore[arg-type]  # an accepted stream transport
                handshaking,
                tls,
                server_side=True,
                # A backstop: the sweep aborts a handshake at the idle deadline, and counts it
                # in closed_idle, before asyncio's own timeout would.
                ssl_handshake_timeout=self._idle_deadline_s + 2 * SWEEP_INTERVAL_S,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S,
            )
        except BaseException as exc:  # refused, reset, timed out, or the loop stopping
            transport.abort()  # type: ignore[attr-defined]  # every stream transport has abort()
            self.forget(handshaking.handler)
            if isinstance(exc, asyncio.CancelledError):
                raise
            # The error's traceback holds start_tls's frame, which holds the future holding the
            # error: a cycle only the garbage collector frees, with the connection's TLS state
            # (some 290 KB) in it. Port scans and health probes left hundreds of MB waiting.
            exc.__traceback__ = None
            return
        if secured is None:  # the connection went during the handshake
            self.forget(handshaking.handler)
            return
        handshaking.up(secured)

    @property
    def open(self) -> int:
        """Connections open now, counted as the cap counts them."""
        return len(self._connections)

    def enter(self, handler: Any) -> None:
        record = self._connections.get(handler)
        if record is not None:
            record.busy += 1

    def leave(self, handler: Any) -> None:
        record = self._connections.get(handler)
        if record is not None:
            record.busy -= 1
            record.since = self._now()

    def sweep(self) -> int:
        """Closes the connections idle past the deadline; how many it closed."""
        now = self._now()
        closed = 0
        for handler, record in list(self._connections.items()):
            if record.busy or now - record.since < self._idle_deadline_s:
                continue
            if record.raw is None:  # accepted, never made: nothing will tell of its end
                del self._connections[handler]
                continue
            # The socket's transport aborted, not the connection closed: a close waits for what
            # is still buffered to be sent (a client that never reads would hold it for ever),
            # and under TLS for the client's close_notify. Its loss uncounts it.
            record.raw.abort()  # type: ignore[attr-defined]  # every stream transport has abort()
            record.raw = None
            closed += 1
        self.closed_idle += closed
        return closed

    async def run(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Sweeps every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()


class _JsonErrorsHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what aiohttp answers itself (a request it cannot
    parse: a control character in a header, a bad query string, a header past 8 KB) in the
    API's JSON error shape, with a fixed message. aiohttp's own is text/plain and quotes the
    bytes it choked on: an Authorization header, an email in a query string, back to whatever
    logs error bodies on the way. It still logs the error (as type and place:
    svc_common.logging) and closes the connection. No slots of its own, so a handler web.Server
    made can take this class (`_answer_errors_in_json`); web.Server has no hook to make it."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, None)  # logs; raises if an answer began
        if status < 500:
            body = {"status": CLIENT_ERROR, "message": "malformed HTTP request"}
        else:
            body = {"status": ERROR, "message": "the request could not be answered"}
        response = web.json_response(body, status=status)
        response.force_close()
        return response


def _answer_errors_in_json(handler: Any) -> None:
    if type(handler) is web_protocol.RequestHandler:
        handler.__class__ = _JsonErrorsHandler
