"""Durable operator state: one SQLite file (WAL) in the data dir, behind `OperatorStore`.

Every write that is acknowledged to a caller runs in one transaction with `synchronous=FULL`, so
it survives a crash (kill -9) once the call returns. Readers load whole tables into memory
snapshots; `versions()` tells what changed since the last load (also across processes)."""

from operator_svc.store.records import (
    ClientRow,
    KeypairRow,
    KeyRow,
    KeysetRow,
    OptOutRow,
    SiteRow,
)
from operator_svc.store.sqlite_store import DB_FILE, OperatorStore, StoreError

__all__ = [
    "DB_FILE",
    "ClientRow",
    "KeyRow",
    "KeypairRow",
    "KeysetRow",
    "OperatorStore",
    "OptOutRow",
    "SiteRow",
    "StoreError",
]
