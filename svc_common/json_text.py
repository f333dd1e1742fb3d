"""JSON from callers: one place that knows every way a body fails to be JSON."""

from __future__ import annotations

import json
from typing import Any


def loads(data: bytes | str) -> Any:
    """`json.loads`, with every malformed input a ValueError: bad UTF-8 already is one, and
    nesting too deep for the parser (RecursionError, which anyone can send) becomes one."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
