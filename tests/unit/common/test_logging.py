"""The per-RPC log line takes a fast path around structlog's processor chain: it must still give
the shape every other event has (event, level, timestamp, service, bound context), honour the
level, and never lose a line to a value orjson cannot render."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog

from svc_common import call_context, edge_log
from svc_common.logging import configure_logging, dumps, silenced, write_call_line


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    call_context.end()
    configure_logging("INFO")


def test_call_line_has_the_shape_of_a_structlog_event(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="operator")
    call_context.begin(request_id="r-1", site_id=7)
    structlog.get_logger("t").info("other")
    write_call_line({**call_context.end(), "code": "OK"})
    other, call = _lines(capsys.readouterr().err)
    assert call["event"] == "rpc"
    assert call["level"] == other["level"] == "info"
    assert call["service"] == other["service"] == "operator"
    assert set(other) - {"event"} <= set(call)
    # Same timestamp text as structlog's TimeStamper(fmt="iso", utc=True).
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
    assert re.fullmatch(pattern, str(call["timestamp"]))
    assert re.fullmatch(pattern, str(other["timestamp"]))
    stamped = datetime.datetime.fromisoformat(str(call["timestamp"]).replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - stamped).total_seconds()) < 5


def test_timestamp_text_follows_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from svc_common import logging as svc_logging

    for now, text in (
        (1000.5, "1970-01-01T00:16:40.500000Z"),
        (1000.75, "1970-01-01T00:16:40.750000Z"),
        (1001.25, "1970-01-01T00:16:41.250000Z"),
        (999.0, "1970-01-01T00:16:39.000000Z"),
    ):
        # svc_common.logging reads the wall clock through the `time` module
        monkeypatch.setattr(time, "time", lambda now=now: now)
        assert svc_logging._utc_now_iso() == text


def test_call_line_is_not_written_above_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", service="operator")
    write_call_line({"code": "OK"})
    structlog.get_logger("t").warning("kept")
    assert [line["event"] for line in _lines(capsys.readouterr().err)] == ["kept"]


def test_events_during_a_call_carry_its_context_and_nothing_leaks_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO")
    log = structlog.get_logger("t")
    call_context.bind(site_id=1)  # outside a call: ignored
    start = edge_log.begin_call("/pkg.Service/A", "req-a")
    call_context.bind(site_id=5)
    log.warning("inside", site_id=99)  # the event's own keys win
    edge_log.end_call(start, "OK", "")
    log.info("after")
    inside, line, after = _lines(capsys.readouterr().err)
    assert inside["request_id"] == "req-a" and inside["site_id"] == 99
    assert line["site_id"] == 5
    assert "request_id" not in after and "site_id" not in after


def test_a_copied_context_shares_the_call_so_worker_binds_reach_the_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO")
    start = edge_log.begin_call("/pkg.Service/B", "req-b")
    contextvars.copy_context().run(call_context.bind, items=3)
    edge_log.end_call(start, "OK", "")
    (line,) = _lines(capsys.readouterr().err)
    assert line["items"] == 3


def test_values_orjson_rejects_fall_back_to_json() -> None:
    assert json.loads(dumps({"n": 2**70})) == {"n": 2**70}
    assert json.loads(dumps({"p": object})) == {"p": str(object)}


def test_end_call_writes_the_bound_context_and_outcome_then_clears_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", service="svc")
    start = edge_log.begin_call("/pkg.Service/Method", "req-1")
    call_context.bind(site_id=10)
    edge_log.end_call(start, "INVALID_ARGUMENT", "INVALID_EMAIL")
    (line,) = _lines(capsys.readouterr().err)
    assert line["request_id"] == "req-1"
    assert line["method"] == "/pkg.Service/Method"
    assert line["site_id"] == 10
    assert line["code"] == "INVALID_ARGUMENT"
    assert line["reason"] == "INVALID_EMAIL"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert call_context.current() == {}


def test_silenced_drops_events_then_puts_the_configuration_back() -> None:
    seen: list[str] = []

    def keep(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        seen.append(event["event"])
        raise structlog.DropEvent

    before = structlog.get_config()
    structlog.configure(processors=[keep], cache_logger_on_first_use=False)
    try:
        with silenced():
            structlog.get_logger("t").warning("inside")
        structlog.get_logger("t").warning("after")
    finally:
        structlog.configure(**before)
    assert seen == ["after"]


def test_a_library_record_is_one_json_line_without_its_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp's parser errors quote the line the client sent, its API key or email included.
    configure_logging("INFO", service="operator")
    quoted = b"Authorization: Bearer UID2-C-L-999-SECRETKEY\x01 jane.doe@example.com"
    try:
        raise ValueError(f"Invalid header value char: {quoted!r}")
    except ValueError as exc:
        error = exc

    def emit() -> None:  # one place in a library
        logging.getLogger("aiohttp.server").error(
            "Error handling request from %s: %r", "10.0.0.1", quoted, exc_info=error
        )

    for _ in range(5):  # a flood from one place: one line, the rest counted
        emit()
    logging.getLogger("grpc._server").info("chatter")  # below WARNING: not ours to write
    err = capsys.readouterr().err
    assert "SECRETKEY" not in err and "jane.doe" not in err and "Traceback" not in err
    (line,) = _lines(err)
    assert line["event"] == "library_log" and line["level"] == "error"
    assert line["logger"] == "aiohttp.server" and line["service"] == "operator"
    assert line["error_type"] == "ValueError"
    assert str(line["where"]).startswith("test_logging:")
    assert str(line["raised_at"]).startswith("test_logging.py:")

    monkeypatch.setattr("svc_common.logging.LIBRARY_LOG_INTERVAL_S", 0.0)
    emit()
    (line,) = _lines(capsys.readouterr().err)
    assert line["dropped_since_last"] == 4


def test_configuring_again_keeps_one_library_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    configure_logging("INFO")
    logging.getLogger("asyncio").warning("socket.accept() out of system resource")
    assert len(_lines(capsys.readouterr().err)) == 1


def test_a_flood_from_one_library_line_does_not_hide_another_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # asyncio logs every error through one line of its exception handler: running out of file
    # descriptors, many times a second, must not drop the one line a real bug gets.
    configure_logging("INFO")

    def handler_logs(error: BaseException) -> None:  # the one place in the library
        logging.getLogger("asyncio").error("Exception in callback", exc_info=error)

    for _ in range(3):
        handler_logs(OSError(24, "Too many open files"))
    empty: dict[str, int] = {}
    try:
        empty["missing"]  # a bug, raised for its traceback
    except KeyError as exc:
        handler_logs(exc)
    lines = _lines(capsys.readouterr().err)
    assert [line["error_type"] for line in lines] == ["OSError", "KeyError"]
    assert lines[0]["errno"] == "EMFILE" and "errno" not in lines[1]
