"""JSON from callers: one place that knows every way a body fails to be JSON."""

from __future__ import annotations

import json
from typing import Any

from svc_common.sensitive import shown


def loads(data: bytes | str, *, unique_keys: bool = False) -> Any:
    """`json.loads`, with every malformed input a ValueError: bad UTF-8 already is one, and
    nesting too deep for the parser (RecursionError, which anyone can send) becomes one.
    `unique_keys`: an object naming a key twice is a ValueError too, not its last value (a
    config file whose second "publishers" list silently dropped the first)."""
    try:
        if unique_keys:
            return json.loads(data, object_pairs_hook=_refuse_duplicates)
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class DuplicateKey(ValueError):
    """An object named a key twice (`loads(..., unique_keys=True)`); the message says which."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(f"key {shown(key)} appears twice in one object")
        obj[key] = value
    return obj
