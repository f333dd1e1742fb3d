"""A stdout that refuses every write, as a full disk (`> /dev/full`) or a reader gone
(`| true`) does: for the CLIs that print a secret once."""

from __future__ import annotations

import errno
import os


class RefusingStdout:
    def __init__(self, code: int = errno.ENOSPC) -> None:
        self._code = code

    def _refuse(self) -> None:
        raise OSError(self._code, os.strerror(self._code))

    def write(self, _text: str) -> int:
        self._refuse()
        return 0

    def flush(self) -> None:
        self._refuse()
