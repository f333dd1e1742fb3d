"""A publisher whose port is taken fails to start and leaves nothing open behind it: its store
and both peer channels are closed before the error surfaces."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from publisher_svc.config import PublisherConfig
from publisher_svc.operator_client import OperatorClient
from publisher_svc.server import start
from publisher_svc.ssp_client import SspClient
from publisher_svc.store import SqliteStore


def test_publisher_on_a_taken_port_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    for cls, name in ((SqliteStore, "store"), (OperatorClient, "operator"), (SspClient, "ssp")):
        real = cls.close

        def recording(self: object, _real: Callable[[Any], None] = real, _name: str = name) -> None:
            closed.append(_name)
            _real(self)

        monkeypatch.setattr(cls, "close", recording)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        config = PublisherConfig(
            listen=f"127.0.0.1:{held.getsockname()[1]}",
            data_dir=str(tmp_path),
            operator_address="127.0.0.1:1",
            operator_api_key="op-key",
            site_id=5,
            ssp_address="127.0.0.1:2",
            ssp_api_key="ssp-key",
            background_refresh=True,
        )
        with pytest.raises(OSError, match="cannot listen"):
            start(config)
    # Newest first, as a normal stop would.
    assert closed == ["ssp", "operator", "store"]
