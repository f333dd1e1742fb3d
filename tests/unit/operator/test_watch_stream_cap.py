"""Security: one ID_READER must not hold every WatchOptOuts slot of the operator."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

import pytest

from operator_svc.domain.optout import MAX_WATCH_STREAMS_PER_CLIENT
from svc_common.errors import ServiceError
from tests.unit.operator.conftest import Env

Stream = Generator[tuple[str, int] | None, None, None]


def _opened(stream: Stream) -> Stream:
    """Reads the backlog up to its end marker (None): the stream then holds its slot."""
    while next(stream) is not None:
        pass
    return stream


def test_a_client_holds_at_most_its_share_of_opt_out_streams(env: Env) -> None:
    reader, admin_client = env.client("reader"), env.client("admin")
    streams = [
        _opened(env.op.optouts.watch(reader, 0, lambda: True))
        for _ in range(MAX_WATCH_STREAMS_PER_CLIENT)
    ]
    assert env.op.optouts.open_streams(reader.name) == MAX_WATCH_STREAMS_PER_CLIENT
    extra = env.op.optouts.watch(reader, 0, lambda: True)
    with pytest.raises(ServiceError) as exc:
        next(extra)
    assert exc.value.reason == "TOO_MANY_STREAMS_FOR_CLIENT"
    # Another participant is not affected; /metrics counts every client's streams.
    other = _opened(env.op.optouts.watch(admin_client, 0, lambda: True))
    assert env.op.readings()["optout_streams_open"] == MAX_WATCH_STREAMS_PER_CLIENT + 1
    other.close()
    # A closed stream gives its slot back.
    streams[0].close()
    again = _opened(env.op.optouts.watch(reader, 0, lambda: True))
    for s in (*streams[1:], again):
        s.close()
    assert env.op.optouts.open_streams(reader.name) == 0
    assert env.op.readings()["optout_streams_open"] == 0


def _active(ended: threading.Event) -> Callable[[], bool]:
    return lambda: not ended.is_set()


def test_a_stream_whose_call_ended_does_not_count_while_it_winds_down(env: Env) -> None:
    """Review: a decryptor reconnecting after a break was refused for up to WATCH_POLL_S, until
    its old stream's thread noticed the call had ended."""
    reader = env.client("reader")
    calls = [threading.Event() for _ in range(MAX_WATCH_STREAMS_PER_CLIENT)]
    streams = [_opened(env.op.optouts.watch(reader, 0, _active(c))) for c in calls]
    calls[0].set()  # the call is gone; its generator has not run again yet
    again = _opened(env.op.optouts.watch(reader, 0, lambda: True))
    for s in (*streams, again):
        s.close()
    assert env.op.optouts.open_streams(reader.name) == 0
