"""KeyContainer (proto) -> the official key JSON the SDKs parse (reference §5).

This is protobuf's JSON mapping with `preserving_proto_field_name`, 64-bit integers written as
JSON numbers (the mapping writes them as strings) and default values left out (so master keys,
site 0, carry no `site_id` and the SDKs assume -1). Wrap it as `{"body": ...}` for
`BidstreamClient._refresh_json` / `SharingClient._refresh_json`."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from uid2.operator.v1 import operator_pb2

_INT64_CONTAINER = (
    "token_expiry_seconds",
    "allow_clock_skew_seconds",
    "max_bidstream_lifetime_seconds",
    "max_sharing_lifetime_seconds",
)
_INT64_KEY = ("id", "created", "activates", "expires")


def key_container_dict(container: operator_pb2.KeyContainer) -> dict[str, Any]:
    body: dict[str, Any] = json_format.MessageToDict(container, preserving_proto_field_name=True)
    for name in _INT64_CONTAINER:
        if name in body:
            body[name] = int(body[name])
    body.setdefault("keys", [])
    body.setdefault("site_data", [])
    for key in body["keys"]:
        for name in _INT64_KEY:
            if name in key:
                key[name] = int(key[name])
    for site in body["site_data"]:
        site.setdefault("domain_names", [])
        site.setdefault("app_names", [])
    return body


def key_json_text(container: operator_pb2.KeyContainer) -> str:
    """`{"body": <container>}` as JSON text, what the SDKs' `_refresh_json` takes."""
    return json.dumps({"body": key_container_dict(container)})
