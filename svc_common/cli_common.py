"""CLI plumbing shared by `uid2-ssp` and `uid2-dsp`: one-line errors (exit 2) and environment
fallbacks for flags."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from svc_common.settings import SettingError, finite_float


class UsageError(Exception):
    """A CLI mistake; printed as one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    value = env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name} must be an integer") from None


def env_float(name: str, default: float) -> float:
    value = env(name)
    if value is None:
        return default
    try:
        return finite_float(value)
    except SettingError as exc:
        raise UsageError(f"{name}: {exc}") from None


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2
