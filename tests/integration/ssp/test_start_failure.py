"""An SSP or DSP whose port is taken fails to start at once, before its decryptor waits on the
operator; and should the port be taken only after that first check (another process binding
it meanwhile), it leaves nothing running behind it: the decryptor's threads are stopped and its
store and channels closed before the error surfaces."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dsp_svc import server as dsp_server
from dsp_svc.config import DspConfig
from dsp_svc.server import create_server as create_dsp
from ssp_svc import server as ssp_server
from ssp_svc.config import SspConfig
from ssp_svc.server import create_server as create_ssp
from ssp_svc.store.accounts import SqliteAccountStore
from svc_common.grpc_server import Served
from tests.integration.ssp.fake_operator import API_KEY, FakeOperator, serve_fake_operator
from tests.support.procs import wait_until
from tests.unit.ssp.support import KeySet

DECRYPTOR_THREADS = {"key-refresh", "optout-watch"}


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def operator() -> Iterator[str]:
    served: Served = serve_fake_operator(FakeOperator(KeySet()))  # type: ignore[abstract]  # a partial fake: only the RPCs the tests call
    yield f"127.0.0.1:{served.port}"
    served.stop(0)


def _decryptor_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in DECRYPTOR_THREADS and t.is_alive()]


def _fails_to_start(start: Callable[[], Any]) -> None:
    assert _decryptor_threads() == []
    with pytest.raises(OSError, match="cannot listen"):
        start()
    assert wait_until(lambda: _decryptor_threads() == [], 5), _decryptor_threads()


@pytest.mark.parametrize("service", ["ssp", "dsp"])
def test_a_taken_port_is_found_before_the_decryptor_starts(
    tmp_path: Path, held_port: int, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the operator unreachable, the SSP and DSP said so only after five warnings and
    10.9 s of the decryptor's first key fetch (misconfiguration review)."""
    module = ssp_server if service == "ssp" else dsp_server
    started: list[str] = []
    monkeypatch.setattr(module, "start_decryptor", lambda *a, **k: started.append("decryptor"))
    listen, unreachable = f"127.0.0.1:{held_port}", "127.0.0.1:1"
    with pytest.raises(OSError, match="cannot listen"):
        if service == "ssp":
            create_ssp(
                SspConfig(
                    listen=listen,
                    data_dir=tmp_path,
                    operator=unreachable,
                    operator_api_key=API_KEY,
                )
            )
        else:
            create_dsp(
                DspConfig(name="d", listen=listen, operator=unreachable, operator_api_key=API_KEY)
            )
    assert started == []


@pytest.fixture
def taken_after_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The port taken between the first check and the bind: only the bind finds it."""
    monkeypatch.setattr(ssp_server, "probe_listen", lambda listen: None)
    monkeypatch.setattr(dsp_server, "probe_listen", lambda listen: None)


@pytest.mark.usefixtures("taken_after_the_check")
def test_ssp_on_a_taken_port_stops_what_it_started(
    tmp_path: Path, held_port: int, operator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    real_close = SqliteAccountStore.close

    def recording_close(self: SqliteAccountStore) -> None:
        closed.append("accounts")
        real_close(self)

    monkeypatch.setattr(SqliteAccountStore, "close", recording_close)
    config = SspConfig(
        listen=f"127.0.0.1:{held_port}",
        data_dir=tmp_path,
        operator=operator,
        operator_api_key=API_KEY,
    )
    _fails_to_start(lambda: create_ssp(config))
    assert closed == ["accounts"]


@pytest.mark.usefixtures("taken_after_the_check")
def test_dsp_on_a_taken_port_stops_its_decryptor(held_port: int, operator: str) -> None:
    config = DspConfig(
        name="d", listen=f"127.0.0.1:{held_port}", operator=operator, operator_api_key=API_KEY
    )
    _fails_to_start(lambda: create_dsp(config))
