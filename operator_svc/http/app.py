"""The HTTP front door: routes, the edge middleware, and `HttpFrontDoor`, which serves an
aiohttp application on its own asyncio loop in a dedicated thread of the operator process.

Why aiohttp: asyncio-native, long maintained, already a pinned dependency, with a small
low-level surface (`AppRunner`/`TCPSite`) that runs happily on a private loop in a thread. The
gRPC server runs on grpc.aio with a loop and thread of its own (svc_common.grpc_aio); the HTTP
side likewise keeps its own loop, and both call the same `Operator` (same snapshots, same
rules). Domain calls are short CPU work and run on the loop, except durable writes and big
batches (logout's opt-out, identity map, buckets), which go to a small thread pool.

Every request gets one JSON log line `http` (method, path, HTTP status, API status, reason,
latency, request id, site). Nothing a client sends yields a 500: `HttpError` and `ServiceError`
become their official status; anything else is a bug, logged by type and place only."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from aiohttp import web

from operator_svc.caller_log import bind_caller
from operator_svc.domain.client_side import REQUEST_TOO_OLD
from operator_svc.domain.operator import Operator
from operator_svc.domain.state import Client
from operator_svc.domain.tokens import GenerateStatus, RefreshStatus
from operator_svc.http import handlers
from operator_svc.http.connections import (
    IDLE_DEADLINE_S,
    MAX_CONNECTIONS,
    MAX_TLS_CONNECTIONS,
    ConnectionGuard,
)
from operator_svc.http.envelope_io import (
    BINARY,
    MAX_BODY_BYTES,
    decode_secret,
    error_body,
    open_request,
    seal_refresh_response,
    seal_response,
)
from operator_svc.http.errors import (
    BODIES_BUSY,
    BODY_TIMEOUT,
    CLIENT_ERROR,
    ERROR,
    EXPIRED_TOKEN,
    INVALID_APP_NAME,
    INVALID_HTTP_ORIGIN,
    INVALID_TOKEN,
    MALFORMED_BODY,
    OPTOUT,
    SUCCESS,
    HttpError,
    from_service_error,
)
from svc_common import call_context
from svc_common.bearer import bearer_key
from svc_common.edge_log import log_unhandled, observe, request_id
from svc_common.errors import ErrorKind, ServiceError
from svc_common.event_loop import finish_pending_tasks
from svc_common.fd_limit import open_files_limit
from svc_common.settings import split_host_port
from svc_common.tls import ServerTls
from svc_common.tls_reload import ReloadingServerTls
from uid2_crypto.client_side import seal_answer

_log = structlog.get_logger("http")

# What in-flight requests get to finish on a stop, as the gRPC drain gives its calls.
DRAIN_GRACE_S = 5.0
# How long a request's body may take to arrive once its headers have (see connections.py for
# the phases before). The largest allowed body, 2 MiB, needs well under 1 Mbit/s for it.
BODY_DEADLINE_S = 30.0
# The bodies of the two routes without an API key (a refresh token, a page's request) are under
# 2 KB: nobody unidentified may make the operator hold 2 MiB for each connection.
UNAUTHENTICATED_BODY_BYTES = 64 * 1024
# Memory held by requests at once, across all connections: past it a request is answered 503.
# A body counts from when it is announced until its answer is sent: while it arrives, as its
# length (its route's limit when the length is unknown: chunked, or compressed, whose decoded
# size the header does not give), so bodies that stall cost what they did; once it has arrived,
# a request with an API key counts HELD_PER_BODY_BYTE per byte of it, for the body, its
# decrypted payload, the parsed request and an answer of about its size (an identity map's is
# larger than its request). Counted only while the body was read, a burst of full-size identity
# maps (each waiting for the blocking pool with its payload, then holding its answer until the
# client read it) took the process past 1 GB; now about 37 of them are held at once.
BODY_BUDGET_BYTES = 256 * 1024 * 1024
HELD_PER_BODY_BYTE = 4
# A request holding no more than this is counted, never refused: a MAPPER running many identity
# maps at once must not have every other participant's token generate answered 503. (Bounded all
# the same: by the connection cap, 4,096 x 64 KiB.)
SMALL_HOLD_BYTES = 64 * 1024
# An answer larger than this is sent before the request stops counting against the budget, and
# must be taken by the client within BODY_DEADLINE_S (else its connection is dropped).
SENT_IN_EDGE_BYTES = 256 * 1024
_HELD = web.RequestKey("uid2_held_bytes", int)

T = TypeVar("T")

Handler = Callable[[Operator, Client, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    # Run in the blocking pool (durable writes, big batches) rather than on the loop, and its
    # answer sealed there too.
    blocking: bool = False
    # Answered one request at a time per process: an answer that can run to 100 MB (every salt
    # bucket) built by eight callers at once took an operator from 0.5 to 2.8 GB.
    one_at_a_time: bool = False


ROUTES: dict[str, Route] = {
    "/v2/token/generate": Route(handlers.generate),
    "/v2/token/validate": Route(handlers.validate),
    "/v2/token/logout": Route(handlers.logout, blocking=True),
    "/v2/identity/map": Route(handlers.identity_map_v2, blocking=True),
    "/v3/identity/map": Route(handlers.identity_map_v3, blocking=True),
    "/v2/identity/buckets": Route(handlers.identity_buckets, blocking=True, one_at_a_time=True),
    "/v2/optout/status": Route(handlers.optout_status),
    "/v2/key/sharing": Route(handlers.key_sharing),
    "/v2/key/bidstream": Route(handlers.key_bidstream),
}
REFRESH_PATH = "/v2/token/refresh"
CLIENT_GENERATE_PATH = "/v2/token/client-generate"
HEALTH_PATH = "/ops/healthcheck"
# Paths a browser calls directly (the JavaScript SDK refreshes and generates from the page).
CORS_PATHS = frozenset({REFRESH_PATH, CLIENT_GENERATE_PATH})
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, X-UID2-Client-Version",
    "Access-Control-Max-Age": "86400",
}
_KNOWN_PATHS = frozenset({*ROUTES, REFRESH_PATH, CLIENT_GENERATE_PATH, HEALTH_PATH})
_TEXT = "text/plain"


def _is_binary(content_type: str | None) -> bool:
    # Not request.content_type: aiohttp reports application/octet-stream when the header is
    # absent, and a body without one is base64 text for the official API.
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == BINARY


def _error_response(error: HttpError) -> web.Response:
    return web.Response(
        status=error.http_status, body=error_body(error), content_type="application/json"
    )


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The request's body; 413 as soon as more than `limit` bytes have come (a chunked body
    announces no length, and must not be read whole first)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _compressed(request: web.Request) -> bool:
    """Whether aiohttp inflates the body: any Content-Encoding but identity. Every header
    counts: aiohttp's parser goes by the last, so a first `identity` hid a gzip bomb."""
    return any(
        e.strip().lower() not in ("", "identity")
        for e in request.headers.getall("Content-Encoding", ())
    )


def _too_large(limit: int) -> HttpError:
    return HttpError(
        413,
        CLIENT_ERROR,
        f"the body is larger than {limit} bytes: send fewer items per call",
        "BODY_TOO_LARGE",
    )


def _from_http_exception(exc: web.HTTPException) -> HttpError:
    if exc.status == 413:
        return _too_large(MAX_BODY_BYTES)
    if exc.status == 404:
        return HttpError(
            404, CLIENT_ERROR, "unknown path: see the UID2 HTTP API's endpoints", "UNKNOWN_PATH"
        )
    if exc.status == 405:
        return HttpError(
            405, CLIENT_ERROR, "method not allowed: the API's endpoints take POST", "BAD_METHOD"
        )
    return HttpError(exc.status, CLIENT_ERROR, exc.reason or "bad request", "HTTP_ERROR")


class HttpApi:
    """The aiohttp application over one `Operator`."""

    def __init__(
        self,
        operator: Operator,
        *,
        blocking: ThreadPoolExecutor | None = None,
    ) -> None:
        self._op = operator
        # The operator's own clock and randomness, so both front doors share what the edge chose.
        self._clock = operator.clock
        self._rng = operator.rng
        self._blocking = blocking
        self.serving = True
        # The tasks serving requests now: what a stop cancels once the drain's grace is over.
        self.in_flight: set[asyncio.Task[Any]] = set()
        # Told when a request enters and leaves its handler, when the front door guards its
        # connections (a test's aiohttp client has none).
        self.connections: ConnectionGuard | None = None
        self._body_bytes = 0  # reserved by bodies being read now (BODY_BUDGET_BYTES)
        self._one_at_a_time = asyncio.Lock()  # Route.one_at_a_time

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._edge], client_max_size=MAX_BODY_BYTES)
        for path, route in ROUTES.items():
            app.router.add_post(path, self._enveloped(route))
        app.router.add_post(REFRESH_PATH, self._refresh)
        app.router.add_route("OPTIONS", REFRESH_PATH, self._preflight)
        app.router.add_post(CLIENT_GENERATE_PATH, self._client_generate)
        app.router.add_route("OPTIONS", CLIENT_GENERATE_PATH, self._preflight)
        app.router.add_get(HEALTH_PATH, self._health)
        return app

    # -- edge -------------------------------------------------------------------------------

    @web.middleware
    async def _edge(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        start = time.perf_counter()
        rid = request_id(request.headers.get("X-Request-Id"))
        path = request.path if request.path in _KNOWN_PATHS else "<unknown>"
        call_context.begin(request_id=rid)
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        connections, connection = self.connections, request.protocol
        if connections is not None:
            connections.enter(connection)  # busy until sent: not the idle sweep's to close
        # One coroutine for all of it: each layer more cost every request a few per cent of
        # the server's CPU (measured).
        try:
            error: HttpError | None = None
            response: web.StreamResponse
            try:
                response = await handler(request)
            except HttpError as exc:
                error = exc
            except ServiceError as exc:
                error = from_service_error(exc)
            except web.HTTPException as exc:
                error = _from_http_exception(exc)
            except asyncio.CancelledError:
                # Cancelled by a stop past its grace (or the caller hung up): nothing answered.
                _log.info(
                    "http",
                    method=request.method,
                    path=path,
                    reason="CANCELLED",
                    latency_ms=round((time.perf_counter() - start) * 1000, 3),
                )
                call_context.end()
                raise
            except Exception as exc:
                log_unhandled(exc)
                error = HttpError(500, ERROR, "internal error", "INTERNAL")
            if error is not None:
                response = _error_response(error)
                if error.reason in (BODY_TIMEOUT, BODIES_BUSY, MALFORMED_BODY):
                    response.force_close()  # the rest of the body may still come: no request
                if _compressed(request) and not request.content.is_eof():
                    # Refused before its body was read (a 401): aiohttp would drain it after
                    # the answer, and one that does not decode made it log an error.
                    request.content.feed_eof()
                    response.force_close()
            if not self.serving:
                # Stopping: this answer is the connection's last, so keep-alive clients do
                # not go on sending requests the stop would have to wait for, then cancel.
                response.force_close()
            response.headers["X-Request-Id"] = rid
            if request.path in CORS_PATHS:
                response.headers.update(_CORS_HEADERS)
            seconds = time.perf_counter() - start
            observe(path, str(response.status), seconds)
            fields: dict[str, Any] = {
                "method": request.method,
                "path": path,
                "http_status": response.status,
                "latency_ms": round(seconds * 1000, 3),
            }
            if error is not None:
                fields["status"] = error.status
                fields["reason"] = error.reason
            _log.info("http", **fields)
            call_context.end()
            body = getattr(response, "body", None)
            large = isinstance(body, bytes) and len(body) > SENT_IN_EDGE_BYTES
            if large or request.get(_HELD, 0) > SMALL_HOLD_BYTES:
                # aiohttp keeps the last request and answer of a kept-alive connection until
                # its next request: an idle one held an identity map's 4 MB for 20 s, outside
                # the budget (200 idle connections: +800 MB). The SDKs open one per call.
                response.force_close()
            if large:
                await self._send(request, response)
            return response
        finally:
            self.in_flight.discard(task)
            if connections is not None:
                connections.leave(connection)
            if held := request.get(_HELD):
                self._body_bytes -= held

    async def _read(
        self, request: web.Request, limit: int = MAX_BODY_BYTES, *, held_per_byte: int = 1
    ) -> bytes:
        """The body, within `limit` bytes (decoded) and the budget. `held_per_byte`: what the
        request counts per byte of body once it has arrived (see BODY_BUDGET_BYTES)."""
        length = request.content_length
        if length is not None and length > limit:
            raise _too_large(limit)
        # A compressed body's length says nothing of its decoded size: read as a chunked one.
        known = None if _compressed(request) else length
        reserve = limit if known is None else known
        self._hold(request, reserve)
        try:
            # asyncio.timeout, not wait_for: no task of its own for every request's body.
            async with asyncio.timeout(BODY_DEADLINE_S):
                if known is not None:  # within `limit`, checked above: read whole
                    body = await request.read()
                else:
                    body = await _read_at_most(request, limit)
        except TimeoutError:
            raise HttpError(
                408,
                CLIENT_ERROR,
                f"the body did not arrive within {BODY_DEADLINE_S:g} s",
                BODY_TIMEOUT,
            ) from None
        except web.RequestPayloadError:
            # A body its Content-Encoding does not decode (plain base64 sent as gzip): the
            # caller's mistake, which it was told as a 500. Marked ended: aiohttp would
            # otherwise drain the rest after the answer, meet the same error and log it.
            request.content.feed_eof()
            raise HttpError(
                400,
                CLIENT_ERROR,
                "the body does not decode as its Content-Encoding says",
                MALFORMED_BODY,
            ) from None
        except (ConnectionResetError, RuntimeError) as exc:
            # The caller hung up mid-body: aiohttp cancels the read (ConnectionResetError), or,
            # when the loss came first, refuses to start it (RuntimeError "Connection closed.").
            # A truncated request, not a bug; nobody is left to read the answer, but the log
            # line says what it was.
            if isinstance(exc, RuntimeError) and request.transport is not None:
                raise
            raise HttpError(
                400,
                CLIENT_ERROR,
                "the connection closed before the whole body arrived",
                "INCOMPLETE_BODY",
            ) from None
        self._hold(request, held_per_byte * len(body))
        return body

    def _hold(self, request: web.Request, total: int) -> None:
        """Makes what `request` holds of the budget `total` bytes (the edge gives it back);
        503 when that is more than it held, more than SMALL_HOLD_BYTES, and the budget has no
        room for it."""
        before = request.get(_HELD, 0)
        if (
            total > max(before, SMALL_HOLD_BYTES)
            and self._body_bytes - before + total > BODY_BUDGET_BYTES
        ):
            raise HttpError(
                503,
                ERROR,
                "too many large requests are in flight at once: try again shortly",
                BODIES_BUSY,
            )
        self._body_bytes += total - before
        request[_HELD] = total

    async def _send(self, request: web.Request, response: web.StreamResponse) -> None:
        """Sends a large answer while its request still counts against the budget: unsent, it
        is memory the process holds for a client that may never read it."""
        try:
            async with asyncio.timeout(BODY_DEADLINE_S):
                await response.prepare(request)
                await response.write_eof()
        except (TimeoutError, ConnectionError):
            # Not taken in time, or the client went: aiohttp finds the answer sent or the
            # connection gone, and answers nothing more on it.
            if request.transport is not None:
                request.transport.abort()

    # -- endpoints --------------------------------------------------------------------------

    def _enveloped(self, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        op = self._op

        async def handle(request: web.Request) -> web.Response:
            client = op.auth.authenticate(
                bearer_key(request.headers.getall("Authorization", ())), known=bind_caller
            )
            body = await self._read(request, held_per_byte=HELD_PER_BODY_BYTE)
            binary = _is_binary(request.headers.get("Content-Type"))
            secret = decode_secret(client.secret)
            opened = open_request(secret, body, binary=binary, now_ms=self._clock.now_ms())

            def answered() -> tuple[str, bytes]:
                answer = route.handler(op, client, opened.payload)
                sealed = seal_response(
                    secret, opened, answer, now_ms=self._clock.now_ms(), rng=self._rng
                )
                return answer["status"], sealed

            if not route.blocking:
                status, sealed = answered()
            elif route.one_at_a_time:
                async with self._one_at_a_time:
                    status, sealed = await self._in_pool(answered)
            else:
                status, sealed = await self._in_pool(answered)
            call_context.bind(status=status)
            # Held while it is sent, as a body is while it is read: unsent, it is memory held
            # for a client that may never read it.
            self._hold(request, max(request.get(_HELD, 0), len(sealed)))
            return web.Response(body=sealed, content_type=BINARY if binary else _TEXT)

        return handle

    async def _in_pool(self, work: Callable[[], T]) -> T:
        # A copy of the call's context: what the work binds (call_context) reaches its line.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._blocking, ctx.run, work)

    async def _refresh(self, request: web.Request) -> web.Response:
        """The body is the bare refresh token; no API key. A success or opt-out answer is
        sealed under the presented token's refresh_response_key; invalid and expired tokens
        are plain JSON errors (400)."""
        body = await self._read(request, UNAUTHENTICATED_BODY_BYTES)
        try:
            token = body.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        outcome = self._op.tokens.refresh(token)
        if outcome.site_id:
            call_context.bind(site_id=outcome.site_id)
        if outcome.status is RefreshStatus.INVALID_TOKEN or not outcome.response_key:
            raise HttpError(
                400,
                INVALID_TOKEN,
                "the refresh token is not valid: send the refresh_token exactly as received, "
                "as the whole body",
                "INVALID_TOKEN",
            )
        if outcome.status is RefreshStatus.EXPIRED_TOKEN:
            raise HttpError(
                400,
                EXPIRED_TOKEN,
                "the refresh token has expired: generate a new identity",
                "EXPIRED_TOKEN",
            )
        call_context.bind(status=outcome.status.value)
        answer: dict[str, Any]
        if outcome.status is RefreshStatus.SUCCESS and outcome.identity is not None:
            answer = {"status": SUCCESS, "body": handlers.identity_json(outcome.identity)}
        else:
            answer = {"status": OPTOUT}
        sealed = seal_refresh_response(outcome.response_key, answer, rng=self._rng)
        return web.Response(body=sealed, content_type=_TEXT)

    async def _client_generate(self, request: web.Request) -> web.Response:
        """A page's request (operator_svc.domain.client_side): its JSON body, no API key. A
        success or opt-out answer is sealed under the secret shared with the page; refusals are
        plain JSON errors (400 client_error, 403 for the page's origin or app)."""
        body = await self._read(request, UNAUTHENTICATED_BODY_BYTES)
        parsed = handlers.client_side_request(body, request.headers.get("Origin"))
        site_id = self._op.client_side.site_of(parsed.subscription_id)
        if site_id is not None:
            call_context.bind(site_id=site_id)
        try:
            secret, outcome = self._op.client_side.generate(parsed)
        except ServiceError as exc:
            if exc.kind is ErrorKind.PERMISSION_DENIED:
                app = exc.reason == "INVALID_APP_NAME"
                status = INVALID_APP_NAME if app else INVALID_HTTP_ORIGIN
                raise HttpError(403, status, exc.message, exc.reason) from None
            if exc.reason == REQUEST_TOO_OLD:
                # The official operator's status for it: "error", not "client_error".
                raise HttpError(400, ERROR, exc.message, exc.reason) from None
            raise
        call_context.bind(site_id=outcome.site_id, status=outcome.status.value)
        answer: dict[str, Any]
        if outcome.status is GenerateStatus.SUCCESS and outcome.identity is not None:
            answer = {"status": SUCCESS, "body": handlers.identity_json(outcome.identity)}
        else:
            answer = {"status": OPTOUT}
        sealed = seal_answer(secret, json.dumps(answer).encode(), self._rng)
        return web.Response(text=sealed, content_type=_TEXT)

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _health(self, request: web.Request) -> web.Response:
        # A lost store (sqlite_db.StoreWatch): what the path names is not what this reads.
        if self.serving and not self._op.store.is_lost:
            return web.Response(text="OK", content_type=_TEXT)
        return web.Response(status=503, text="NOT_SERVING", content_type=_TEXT)


class HttpFrontDoor:
    """Serves `HttpApi` on `listen` (HOST:PORT; port 0 picks one) from a dedicated thread with
    its own event loop. `start()` returns the bound port; `stop()` drains and joins."""

    def __init__(
        self,
        operator: Operator,
        listen: str,
        *,
        blocking_workers: int = 4,
        tls: ServerTls | None = None,
    ) -> None:
        self._listen = listen
        self._tls = tls
        self._blocking = ThreadPoolExecutor(
            max_workers=blocking_workers, thread_name_prefix="http-blocking"
        )
        self.api = HttpApi(operator, blocking=self._blocking)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Future[None] | None = None
        self._stopping: concurrent.futures.Future[None] | None = None
        self.port = 0

    def start(self) -> int:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            finish_pending_tasks(loop)
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="http-front-door", daemon=True)
        self._thread.start()
        # Timed waits: the main thread runs a stop signal's handler only between bytecodes.
        while not ready.wait(0.1):
            pass
        if failure:
            self._thread.join(5)
            self._blocking.shutdown(wait=False)
            exc = failure[0]
            if isinstance(exc, OSError):
                raise OSError(f"cannot listen on {self._listen} (HTTP): {exc.strerror}") from exc
            raise exc
        return self.port

    async def _start(self) -> None:
        host, port = split_host_port(self._listen)
        runner = web.AppRunner(
            self.api.app(),
            access_log=None,
            shutdown_timeout=DRAIN_GRACE_S,
            # Past the sweep's deadline: the sweep closes idle connections (aborting them, and
            # counting them in http_connections_closed_idle), not aiohttp's graceful close.
            keepalive_timeout=IDLE_DEADLINE_S + 5,
        )
        await runner.setup()
        try:
            ssl_context = None
            if self._tls is not None:
                ssl_context = ReloadingServerTls(self._tls, listener="http").ssl_context()
            if runner.server is None:  # setup() makes it
                raise RuntimeError("aiohttp runner has no server after setup")
            guard = ConnectionGuard(
                runner.server,
                # Half the process's files at most: its gRPC port and stores need the rest.
                max_connections=min(
                    MAX_TLS_CONNECTIONS if ssl_context is not None else MAX_CONNECTIONS,
                    open_files_limit() // 2,
                ),
                idle_deadline_s=IDLE_DEADLINE_S,
                tls=ssl_context,
            )
            # Listened on here rather than through aiohttp's TCPSite: the guard's factory is
            # what counts and refuses connections as they open, and runs their TLS handshakes.
            listener = await asyncio.get_running_loop().create_server(
                guard.protocol, host, port, reuse_address=True
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._listener = runner, listener
        self.api.connections = guard
        self._sweeper = asyncio.ensure_future(guard.run())
        self.port = int(listener.sockets[0].getsockname()[1])

    def readings(self) -> dict[str, float]:
        """What /metrics shows of the HTTP API's connections (svc_common.metrics)."""
        guard = self.api.connections
        if guard is None:
            return {}
        return {
            "http_connections_open": float(guard.open),
            "http_connections_refused": float(guard.refused),
            "http_connections_closed_idle": float(guard.closed_idle),
        }

    def begin_stop(self, grace_s: float = DRAIN_GRACE_S) -> None:
        """Starts the stop without waiting for it: refuses new connections at once, gives
        in-flight requests `grace_s`, then cancels them. Runs beside the gRPC drain (the
        operator calls it before that drain), so the two graces overlap instead of adding up."""
        loop, runner = self._loop, self._runner
        if loop is None or self._stopping is not None:
            return
        self.api.serving = False
        if runner is not None and loop.is_running():
            self._stopping = asyncio.run_coroutine_threadsafe(self._shutdown(runner, grace_s), loop)

    async def _shutdown(self, runner: web.AppRunner, grace_s: float) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections; those open drain below
        if self._sweeper is not None:
            self._sweeper.cancel()
        # The requests in flight first, while their connections still read: aiohttp's own
        # shutdown (runner.cleanup) drops every byte that arrives after it starts, so a request
        # whose body was still on its way was never answered and held the grace to its end.
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace_s
        while self.api.in_flight and loop.time() < ends:
            await asyncio.wait(set(self.api.in_flight), timeout=ends - loop.time())
        cleanup = asyncio.ensure_future(runner.cleanup())
        done, _ = await asyncio.wait({cleanup}, timeout=max(ends - loop.time(), 0.1))
        if not done:
            # aiohttp itself would wait its timeout (shutdown_timeout) a second time for a
            # handler it does not cancel (one awaiting a blocked opt-out write, say).
            for task in list(self.api.in_flight):
                task.cancel()
        await cleanup

    def stop(self) -> None:
        """Finishes the stop (`begin_stop` if nobody did): waits for the drain, stops the loop,
        joins its thread."""
        self.begin_stop()
        loop, thread, stopping = self._loop, self._thread, self._stopping
        if loop is None or thread is None:
            return
        self._loop = None
        if stopping is not None:
            try:
                # The grace, and at worst aiohttp's second wait for handlers that ignore the
                # cancel.
                stopping.result(timeout=2 * DRAIN_GRACE_S + 1)
            except Exception as exc:  # still stop the loop below
                _log.warning("http_stop_failed", error_type=type(exc).__name__)
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        # Not waited for: an opt-out (/v2/token/logout) still waiting on another process's
        # SQLite lock must not hold the stop up (as operator_svc/server.shut_pools).
        self._blocking.shutdown(wait=False, cancel_futures=True)
