"""The byte-exact vectors (a copy of docs/vectors/uid2_vectors.json) and helpers over them."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.keys import Key, KeyContainer, parse_key_container_json
from uid2_crypto.tokens import TokenPayload

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "uid2_vectors.json").read_text(encoding="utf-8")
)
TIMES = VECTORS["times_ms"]
NOW_MS: int = TIMES["generated_and_refreshed"] + 1000
NONCES = {k: bytes.fromhex(v) for k, v in VECTORS["fixed_nonces"].items()}


def container(scope: str = "UID2") -> KeyContainer:
    return parse_key_container_json(VECTORS[f"key_json_{scope.lower()}"]["body"])


def master_key() -> Key:
    k = container().keyring.get(VECTORS["keys"]["master_key_id"])
    assert k is not None
    return k


def site_key() -> Key:
    k = container().keyring.get(VECTORS["keys"]["site_key_id"])
    assert k is not None
    return k


def fixed_rng(*chunks: bytes) -> Callable[[int], bytes]:
    """An rng handing out the given byte strings in order, checking each requested size."""
    it = iter(chunks)

    def rng(n: int) -> bytes:
        b = next(it)
        assert len(b) == n
        return b

    return rng


def iso_ms(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).timestamp() * 1000)


def token_vectors(prefix: str = "") -> list[dict[str, Any]]:
    return [t for t in VECTORS["tokens"] if t["name"].startswith(prefix)]


def payload_for(vector: dict[str, Any]) -> TokenPayload:
    """The payload the vector's token was minted from (SDK generator defaults: zero ids)."""
    exp = vector["expected"]
    return TokenPayload(
        raw_uid=base64.b64decode(exp["uid"]),
        identity_type=IdentityType.PHONE if exp["identity_type"] == "Phone" else IdentityType.EMAIL,
        identity_scope=IdentityScope[exp["identity_scope"]],
        site_id=exp["site_id"],
        publisher_id=0,
        client_key_id=0,
        privacy_bits=3 if "privacy_bits=3" in vector["name"] else 0,
        established_ms=TIMES["established"],
        refreshed_ms=TIMES["generated_and_refreshed"],
        created_ms=TIMES["generated_and_refreshed"],
        expires_ms=TIMES["expires"],
    )
