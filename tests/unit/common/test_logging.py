"""The per-RPC log line takes a fast path around structlog's processor chain: it must still give
the shape every other event has (event, level, timestamp, service, bound context), honour the
level, and never lose a line to a value orjson cannot render."""

from __future__ import annotations

import datetime
import json
import re

import pytest
import structlog

from svc_common import edge_log
from svc_common.logging import configure_logging, dumps, write_call_line


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _reset_logging():  # type: ignore[no-untyped-def]
    yield
    structlog.contextvars.clear_contextvars()
    configure_logging("INFO")


def test_call_line_has_the_shape_of_a_structlog_event(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="operator")
    structlog.get_logger("t").info("other", site_id=7)
    write_call_line({"site_id": 7, "code": "OK"})
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


def test_call_line_is_not_written_above_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", service="operator")
    write_call_line({"code": "OK"})
    structlog.get_logger("t").warning("kept")
    assert [line["event"] for line in _lines(capsys.readouterr().err)] == ["kept"]


def test_values_orjson_rejects_fall_back_to_json() -> None:
    assert json.loads(dumps({"n": 2**70})) == {"n": 2**70}
    assert json.loads(dumps({"p": object})) == {"p": str(object)}


def test_end_call_writes_the_bound_context_and_outcome_then_clears_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", service="svc")
    start = edge_log.begin_call("/pkg.Service/Method", "req-1")
    structlog.contextvars.bind_contextvars(site_id=10)
    edge_log.end_call(start, "INVALID_ARGUMENT", "INVALID_EMAIL")
    (line,) = _lines(capsys.readouterr().err)
    assert line["request_id"] == "req-1"
    assert line["method"] == "/pkg.Service/Method"
    assert line["site_id"] == 10
    assert line["code"] == "INVALID_ARGUMENT"
    assert line["reason"] == "INVALID_EMAIL"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert structlog.contextvars.get_contextvars() == {}
