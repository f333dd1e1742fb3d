from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.domain.operator import Operator
from operator_svc.domain.state import Client
from operator_svc.store import OperatorStore
from svc_common import sqlite_db
from svc_common.clock import ManualClock
from uid2_crypto.salts import SaltSet

T0 = 1_800_000_000_000


@contextmanager
def another_writer_during_salt_rotation(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[bool]]:
    """While a salt rotation is computed (SaltSet.rotate_counted), another connection writes to the
    store, with a 0.5 s busy timeout: StoreBusy if the rotation held the write lock then.
    Yields the list each write that got in appends True to."""
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", 0.5)
    other = OperatorStore.open(data_dir)
    rotate = SaltSet.rotate_counted
    wrote: list[bool] = []

    def rotate_while_another_writes(
        salts: SaltSet, *args: Any, **kwargs: Any
    ) -> tuple[SaltSet, int]:
        with other.transaction() as conn:
            OperatorStore.set_meta(conn, "probe", 1)
        wrote.append(True)
        return rotate(salts, *args, **kwargs)

    monkeypatch.setattr(SaltSet, "rotate_counted", rotate_while_another_writes)
    try:
        yield wrote
    finally:
        other.close()


@dataclass
class Env:
    dir: Path
    store: OperatorStore
    clock: ManualClock
    op: Operator
    keys: dict[str, admin.NewClient]

    def client(self, name: str) -> Client:
        return self.op.auth.authenticate(self.keys[name].api_key)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("operator")
    store = OperatorStore.create(d)
    admin.initialise(store, T0, os.urandom)
    keys = {}
    for name, site, roles in (
        ("gen", 10, ["GENERATOR"]),
        ("sso", 20, ["GENERATOR"]),
        ("mapper", 10, ["MAPPER"]),
        ("optout", 10, ["OPTOUT"]),
        ("reader", 30, ["ID_READER"]),
        ("sharer", 40, ["SHARER"]),
        ("admin", 50, ["ADMIN"]),
        ("other", 11, ["GENERATOR"]),
    ):
        keys[name] = admin.add_client(
            store, site_id=site, name=name, roles=roles, now_ms=T0, rng=os.urandom
        )
    admin.add_site(store, 12, "delegating", ["pub.example"], ["com.pub.app"], T0, os.urandom)
    admin.grant_delegation(store, 12, "sso", T0)
    clock = ManualClock(T0)
    op = Operator(OperatorConfig(data_dir=d), store, clock=clock, rng=os.urandom)
    yield Env(d, store, clock, op, keys)
    op.close()


@pytest.fixture(autouse=True)
def _reset_clock(request: pytest.FixtureRequest) -> None:
    if "env" in request.fixturenames:
        request.getfixturevalue("env").clock.set(T0)
