"""The process's limit on open files: raised at start as far as allowed, because the usual
default soft limit (1024) is what a burst of client connections exhausts first, and with it
every listener of the process (gRPC, HTTP, /metrics), not only the one being flooded."""

from __future__ import annotations

import resource

WANTED = 65536


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


def open_files_limit() -> int:
    """The soft limit on open files now (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return WANTED if soft == resource.RLIM_INFINITY else soft
