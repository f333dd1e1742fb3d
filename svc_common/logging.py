"""structlog set up once per process: one JSON object per line on stderr.

What is logged is chosen at each call site; by rule no call site passes DII, hashes, raw UID2s,
tokens, API keys or secrets. Request context (request id, method, caller site) is bound once per
RPC by the edge (svc_common.call_context) and merged into every event logged during the call.

The one line per RPC (`write_call_line`) does not go through structlog's processor chain: it is
the hottest line by far, and on a busy operator the chain (bound logger, processors, stdlib json)
cost about a fifth of GenerateToken's throughput (measured with bench/operator_bench.py). It is
rendered here to the same JSON shape the chain gives every other event (event, level, timestamp,
service and the bound context), with orjson, which both paths use.

Libraries log through the standard `logging` module (aiohttp's parser errors, asyncio's
exception handler, grpc's). Left alone, those records reach Python's last-resort handler:
multi-line tracebacks that quote what the client sent (a header with its API key, a query
string with an email). `configure_logging` routes them to `_LibraryLogHandler` instead: one
JSON line naming the logger, the place and the exception type, never the record's text, and
at most one a `LIBRARY_LOG_INTERVAL_S` per place (a flood, such as accept() failing for want
of file descriptors, is counted rather than written)."""

from __future__ import annotations

import errno
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import structlog

from svc_common import call_context

# What `configure_logging` set; `write_call_line` reads it instead of asking structlog each call.
_service = ""
_info_enabled = True
# structlog binds a module's logger for good on its first use once caching is on: cheaper for
# every line after (the HTTP API logs one per request through it). Off in the test suite
# (tests/conftest.py): a logger first used under one test's configure_logging() kept that
# call's processors, so a later test's capture_logs(), which swaps the current ones, missed it.
CACHE_LOGGERS = True


def configure_logging(level: str = "INFO", service: str = "") -> None:
    global _service, _info_enabled
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _service, _info_enabled = service, lvl <= logging.INFO
    processors: list[Any] = [
        call_context.merge_into_event,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        processors.append(_add_service(service))
    processors += [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(serializer=dumps),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _LibraryLogHandler)]:
        root.removeHandler(handler)
    root.addHandler(_LibraryLogHandler())
    # Libraries' INFO chatter is theirs; their warnings and errors are ours to see.
    root.setLevel(max(lvl, logging.WARNING))


LIBRARY_LOG_INTERVAL_S = 10.0


class _LibraryLogHandler(logging.Handler):
    """A library's log record as one JSON line without its text (see the module's docstring),
    rate-limited per logger and place."""

    def __init__(self) -> None:
        super().__init__()
        self._limit_lock = threading.Lock()
        # (logger, place, error type, raised at) -> (monotonic time of the last line written,
        # records dropped since)
        self._last: dict[tuple[str, str, str, str], tuple[float, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            place = f"{record.module}:{record.lineno}"
            error = record.exc_info[1] if record.exc_info else None
            raised_at = where(error) if error is not None else ""
            # Libraries log every error from one line of theirs (asyncio's exception handler,
            # aiohttp's log_exception): the error's own type and origin tell one flood from
            # another bug, which must not be dropped with it.
            key = (record.name, place, type(error).__name__, raised_at)
            now = time.monotonic()
            with self._limit_lock:
                last, dropped = self._last.get(key, (-LIBRARY_LOG_INTERVAL_S, 0))
                if now - last < LIBRARY_LOG_INTERVAL_S:
                    self._last[key] = (last, dropped + 1)
                    return
                if len(self._last) > 1000:  # code lines and error types: a few in practice
                    self._last.clear()
                self._last[key] = (now, 0)
            fields: dict[str, Any] = {
                "event": "library_log",
                "level": record.levelname.lower(),
                "timestamp": _utc_now_iso(),
                "logger": record.name,
                "where": place,
            }
            if _service:
                fields["service"] = _service
            if error is not None:
                fields["error_type"] = type(error).__name__
                fields["raised_at"] = raised_at
                if isinstance(error, OSError) and error.errno is not None:
                    fields["errno"] = errno.errorcode.get(error.errno, error.errno)
            if dropped:
                fields["dropped_since_last"] = dropped
            _write(dumps(fields))
        except Exception:  # noqa: S110  # never raise into the library, nor print the
            pass  # record (logging.Handler.handleError would, text and arguments included)


def where(exc: BaseException) -> str:
    """File and line an exception came from: what a log may say of it (its text may not)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


@contextmanager
def silenced() -> Iterator[None]:
    """For the one-shot admin commands: their outcome is their JSON on stdout or their one line
    on stderr, and a store's warning event printed beside it (structlog's default goes to
    stdout, in its console format) would break both. The configuration before is put back: a
    test (or a program) calling a CLI's main in-process keeps its logging."""

    def drop(*_: Any) -> Any:
        raise structlog.DropEvent

    was_configured, before = structlog.is_configured(), structlog.get_config()
    structlog.configure(processors=[drop], cache_logger_on_first_use=False)
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**before)
        else:
            structlog.reset_defaults()


def dumps(obj: Any, **_: Any) -> str:
    """One event as JSON. orjson rejects what stdlib json takes (integers past 64 bits); those
    rare events fall back to json rather than being lost."""
    try:
        return orjson.dumps(obj, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, default=str)


def write_call_line(fields: dict[str, Any]) -> None:
    """Writes one RPC's line at INFO: `fields` (the bound context and the call's outcome, taken
    over by this function) plus event "rpc", level, timestamp and service."""
    if not _info_enabled:
        return
    _write(_info_line("rpc", fields))


def write_lifecycle_line(event: str, **fields: Any) -> None:
    """A `serve`'s "serving" or "stopped" line, written at INFO whatever the log level: a
    supervisor reads the bound port from the first (port 0 picks one) and waits for the
    second. At --log-level WARNING both were dropped, and the port could not be known."""
    try:  # noqa: SIM105  # as edge_log.end_call for call lines: a broken log stream stops nothing
        _write(_info_line(event, fields))
    except (OSError, ValueError):
        pass


def _info_line(event: str, fields: dict[str, Any]) -> str:
    """`fields` (taken over) as one JSON line at INFO, with `event`, level, timestamp and
    service."""
    fields["event"] = event
    fields["level"] = "info"
    fields["timestamp"] = _utc_now_iso()
    if _service:
        fields.setdefault("service", _service)
    return dumps(fields)


# The date-and-time part changes once a second; rendering it once per second saves most of the
# timestamp's cost. Same text as structlog's TimeStamper(fmt="iso", utc=True). One tuple, replaced
# whole, so a thread never pairs one second with another second's text.
_stamp: tuple[int, str] = (-1, "")


def _utc_now_iso() -> str:
    global _stamp
    now = time.time()
    sec = int(now)
    stamp = _stamp
    if stamp[0] != sec:
        stamp = _stamp = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{stamp[1]}.{int((now - sec) * 1_000_000):06d}Z"


def _add_service(service: str) -> Any:
    def processor(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        return event

    return processor


def _write(line: str) -> None:
    """Writes to whatever `sys.stderr` is at the time of the call, so cached loggers keep
    working when stderr is swapped (test capture, daemonisation)."""
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


class _StderrLogger:
    def msg(self, message: str) -> None:
        _write(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _StderrLoggerFactory:
    def __call__(self, *args: Any) -> _StderrLogger:
        return _StderrLogger()
