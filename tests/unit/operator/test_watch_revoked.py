"""A WatchOptOuts stream lives for days; a key disabled meanwhile ends it, UNAUTHENTICATED,
instead of feeding a participant whose access was withdrawn."""

from __future__ import annotations

import os
import time

import pytest

from operator_svc import admin
from operator_svc.domain.optout import WATCH_POLL_S
from svc_common.errors import ErrorKind, ServiceError
from tests.unit.operator.conftest import T0, Env


def test_disabling_the_key_ends_its_open_stream(env: Env) -> None:
    new = admin.add_client(
        env.store, site_id=31, name="revoked-reader", roles=["ID_READER"], now_ms=T0, rng=os.urandom
    )
    env.op.sync_now()
    # The call "ends" by itself after a while: a stream that is not ended must not hang the test.
    deadline = time.monotonic() + WATCH_POLL_S + 3.0
    stream = env.op.optouts.watch(
        env.op.auth.authenticate(new.api_key), 0, lambda: time.monotonic() < deadline
    )
    while next(stream) is not None:  # the backlog, up to its end mark
        pass
    assert admin.set_client_disabled(env.store, name="revoked-reader", key_id=None, disabled=True)
    env.op.sync_now()
    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        next(stream)
    assert caught.value.kind is ErrorKind.UNAUTHENTICATED
    assert caught.value.reason == "CLIENT_DISABLED"
    assert time.monotonic() - started < WATCH_POLL_S + 2.0
