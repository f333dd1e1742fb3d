"""uid2_crypto promises it never reads a clock or global randomness (see its package docstring):
every encoder takes its `rng` from the caller, with no default that would quietly fall back to
os.urandom and make the output impossible to pin in a test."""

from __future__ import annotations

import inspect
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import uid2_crypto
from uid2_crypto.refresh import encode_refresh_token
from uid2_crypto.tokens import (
    encode_advertising_token_v2,
    encode_advertising_token_v3,
    encode_advertising_token_v4,
)

ENCODERS = [
    encode_advertising_token_v2,
    encode_advertising_token_v3,
    encode_advertising_token_v4,
    encode_refresh_token,
]
# Ambient sources of time or randomness; the package must name none of them.
AMBIENT = re.compile(r"\bos\.urandom\b|\bimport (secrets|random|time)\b|\bdatetime\.now\b")


@pytest.mark.parametrize("encoder", ENCODERS, ids=lambda f: f.__name__)
def test_encoders_require_an_rng(encoder: Callable[..., Any]) -> None:
    assert inspect.signature(encoder).parameters["rng"].default is inspect.Parameter.empty


def test_package_source_reads_no_ambient_randomness_or_clock() -> None:
    root = Path(uid2_crypto.__file__).parent
    modules = [root / f"{m.name}.py" for m in pkgutil.iter_modules([str(root)])]
    assert len(modules) > 5
    offenders = [p.name for p in modules if AMBIENT.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
