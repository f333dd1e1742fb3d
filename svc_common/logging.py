"""structlog set up once per process: one JSON object per line on stderr.

What is logged is chosen at each call site; by rule no call site passes DII, hashes, raw UID2s,
tokens, API keys or secrets. Request context (request id, method, caller site) is bound once per
RPC by the edge (svc_common.call_context) and merged into every event logged during the call.

The one line per RPC (`write_call_line`) does not go through structlog's processor chain: it is
the hottest line by far, and on a busy operator the chain (bound logger, processors, stdlib json)
cost about a fifth of GenerateToken's throughput (measured with bench/operator_bench.py). It is
rendered here to the same JSON shape the chain gives every other event (event, level, timestamp,
service and the bound context), with orjson, which both paths use."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import structlog

from svc_common import call_context

# What `configure_logging` set; `write_call_line` reads it instead of asking structlog each call.
_service = ""
_info_enabled = True


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
        cache_logger_on_first_use=True,
    )


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
    fields["event"] = "rpc"
    fields["level"] = "info"
    fields["timestamp"] = _utc_now_iso()
    if _service:
        fields.setdefault("service", _service)
    _write(dumps(fields))


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
