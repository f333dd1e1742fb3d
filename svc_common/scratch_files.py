"""Scratch files: a file made whole under a hidden name beside its target, then given the
target's name (a new store, a backup, a restore).

A process killed with -9 cannot remove its scratch file, and a backup's can be as large as the
store: left alone, every such kill leaks that much disk. So a scratch file is locked (flock) for
as long as its maker runs, and whoever next makes one in that directory removes those whose
lock is free. The kernel frees a lock when its holder dies; only leftovers are removed, never a
file another process is still writing."""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import structlog

_log = structlog.get_logger("store")

# SQLite's files beside a database; a scratch database may have any of them.
_SIDE_SUFFIXES = ("-journal", "-wal", "-shm")

# The gap between creating a scratch file and locking it: a file younger than this may be one
# whose maker has not locked it yet, so it is never removed, locked or not.
MIN_LEFTOVER_AGE_S = 60.0


# "-locked-": versions before the lock named theirs `.NAME.KIND-<hex>` and never locked them; a
# sweep must not take such a file (an older binary's backup still running) for a leftover.
_LOCKED = "-locked-"


def _pattern(kind: str) -> re.Pattern[str]:
    return re.compile(
        rf"\..+\.{re.escape(kind)}{_LOCKED}[0-9a-f]{{12}}(?P<side>-journal|-wal|-shm)?"
    )


@contextmanager
def scratch_file(target: Path, kind: str) -> Iterator[Path]:
    """Yields a new, empty, owner-only file `.{target.name}.{kind}-locked-{random}` beside
    `target`,
    locked while the block runs and removed after it, with SQLite's files beside it. First
    removes the leftovers of `kind` in that directory. FileExistsError never: the name is
    random (a process id repeats, always 1 in a container)."""
    sweep_leftovers(target.parent, kind)
    path = target.with_name(f".{target.name}.{kind}{_LOCKED}{os.urandom(6).hex()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new name: nobody else holds it
        yield path
    finally:
        for side in ("", *_SIDE_SUFFIXES):
            path.with_name(path.name + side).unlink(missing_ok=True)
        os.close(fd)  # the lock goes last: the files are gone before a sweeper may take them


def sweep_leftovers(directory: Path, kind: str, *, now: float | None = None) -> int:
    """Removes the scratch files of `kind` in `directory` whose makers are gone (their lock is
    free, and they are at least MIN_LEFTOVER_AGE_S old); returns how many files it removed.
    Best effort: a directory or file it may not read is left as it is."""
    pattern = _pattern(kind)
    cutoff = (time.time() if now is None else now) - MIN_LEFTOVER_AGE_S
    try:
        names = [m for name in os.listdir(directory) if (m := pattern.fullmatch(name))]
    except OSError:
        return 0
    present = {m.string for m in names}
    removed = 0
    for match in names:
        path = directory / match.string
        side = match.group("side")
        if side is not None:
            # Beside a scratch file still there: removed with it, or not at all.
            if match.string.removesuffix(side) in present or not _old(path, cutoff):
                continue
            removed += _unlink(path)
        elif _old(path, cutoff) and _lock_is_free(path):
            removed += _unlink(path)
            for side_suffix in _SIDE_SUFFIXES:
                removed += _unlink(path.with_name(path.name + side_suffix))
    if removed:
        _log.info("scratch_leftovers_removed", directory=str(directory), files=removed)
    return removed


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except OSError:
        return False


def _lock_is_free(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its maker is still at work
    finally:
        os.close(fd)
    return True


def _unlink(path: Path) -> int:
    with suppress(OSError):  # gone already, not ours, or not a file
        path.unlink()
        return 1
    return 0
