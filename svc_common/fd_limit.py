"""The process's limit on open files: raised at start as far as allowed, because the usual
default soft limit (1024) is what a burst of client connections exhausts first, and with it
every listener of the process (gRPC, HTTP, /metrics), not only the one being flooded."""

from __future__ import annotations

import errno
import resource

WANTED = 65536
# The least a service starts with. gRPC core needs a few descriptors of its own before it
# listens (at 16 it aborts the process: "epoll_create1 unavailable"), and each server takes a
# quarter of the limit as its cap on connections (grpc_server.py): 32 at this floor.
MIN_OPEN_FILES = 128


def raise_open_files_limit(wanted: int = WANTED) -> int:
    """Raises the soft limit on open files to `wanted`, or to the hard limit if that is lower,
    never lowering it; returns the soft limit now (`wanted` when unlimited)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft
    return target


def ensure_open_files_limit() -> int:
    """raise_open_files_limit(), then OSError (EMFILE, a one-line message) below
    MIN_OPEN_FILES, so that a `serve` fails as a usage error, not in gRPC core."""
    files = raise_open_files_limit()
    if files < MIN_OPEN_FILES:
        raise OSError(
            errno.EMFILE,
            f"the limit on open files (ulimit -n) is {files}, and its hard limit allows no "
            f"more; a service needs at least {MIN_OPEN_FILES}",
        )
    return files


def open_files_limit() -> int:
    """The soft limit on open files now (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return WANTED if soft == resource.RLIM_INFINITY else soft
