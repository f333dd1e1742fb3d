"""The operator's KeyContainer proto rendered as the official key JSON body (uid2-reference §5):
what protobuf's JSON mapping gives with preserved field names, except that 64-bit integers are
JSON numbers and secrets standard base64 — the shape `uid2_crypto.keys.parse_key_container_json`
and the official SDKs read."""

from __future__ import annotations

import base64
from typing import Any

from uid2.operator.v1 import operator_pb2


def key_container_to_json(c: operator_pb2.KeyContainer) -> dict[str, Any]:
    return {
        "caller_site_id": c.caller_site_id,
        "master_keyset_id": c.master_keyset_id,
        "default_keyset_id": c.default_keyset_id,
        "token_expiry_seconds": c.token_expiry_seconds,
        "identity_scope": c.identity_scope or "UID2",
        "allow_clock_skew_seconds": c.allow_clock_skew_seconds,
        "max_bidstream_lifetime_seconds": c.max_bidstream_lifetime_seconds,
        "max_sharing_lifetime_seconds": c.max_sharing_lifetime_seconds,
        "keys": [
            {
                "id": k.id,
                "keyset_id": k.keyset_id,
                "site_id": k.site_id,
                "created": k.created,
                "activates": k.activates,
                "expires": k.expires,
                "secret": base64.b64encode(k.secret).decode("ascii"),
            }
            for k in c.keys
        ],
        "site_data": [
            {
                "id": s.id,
                "domain_names": list(s.domain_names),
                "app_names": list(s.app_names),
            }
            for s in c.site_data
        ],
    }
