"""The SSP's ready line says how many accounts may call it, and warns when none may: a data dir
given by mistake starts a new, empty store, and every caller then got UNAUTHENTICATED with
nothing in the SSP's log saying why (misconfiguration review)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from ssp_svc.config import SspConfig
from ssp_svc.server import create_server
from ssp_svc.store.accounts import AccountKind, SqliteAccountStore
from tests.unit.ssp.support import fixed_clock


def _ready_lines(data_dir: Path) -> list[MutableMapping[str, Any]]:
    with capture_logs() as logs:
        served, _ = create_server(SspConfig(listen="127.0.0.1:0", data_dir=data_dir))
        served.stop(0)
    return [e for e in logs if e["event"] in ("ssp_ready", "no_accounts")]


def test_an_ssp_no_account_may_call_warns_at_start(tmp_path: Path) -> None:
    lines = _ready_lines(tmp_path)
    assert [(e["event"], e.get("accounts")) for e in lines] == [
        ("ssp_ready", 0),
        ("no_accounts", None),
    ]
    assert lines[1]["log_level"] == "warning"


def test_the_ready_line_counts_enabled_accounts_only(tmp_path: Path) -> None:
    store = SqliteAccountStore(tmp_path, rng=os.urandom, clock=fixed_clock(), create=True)
    try:
        store.add("news", AccountKind.PUBLISHER, domains=("news.example.com",))
        store.add("dsp-feed", AccountKind.SUBSCRIBER)
        store.add("old", AccountKind.SUBSCRIBER)
        store.set_disabled(AccountKind.SUBSCRIBER, "old", True)
    finally:
        store.close()
    assert [(e["event"], e.get("accounts")) for e in _ready_lines(tmp_path)] == [("ssp_ready", 2)]
