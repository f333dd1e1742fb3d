"""The publisher's durable state: stored identities (server-side mode), recorded operator
opt-outs and the per-user site opt-out flag."""

from publisher_svc.store.sqlite import DueIdentity, SqliteStore, StoredIdentity, StoreError

__all__ = ["DueIdentity", "SqliteStore", "StoreError", "StoredIdentity"]
