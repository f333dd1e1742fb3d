"""A service raises its open-files limit as far as the hard limit allows, never lowers it, and
refuses to start, in one line, below the least it serves with."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from demo.processes import BIN
from svc_common.fd_limit import MIN_OPEN_FILES, open_files_limit, raise_open_files_limit


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_a_low_soft_limit_is_raised_up_to_the_hard_one(limits: tuple[int, int]) -> None:
    _, hard = limits
    if hard != resource.RLIM_INFINITY and hard < 300:
        pytest.skip("hard limit too low to tell a raise apart")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    wanted = 300 if hard == resource.RLIM_INFINITY else min(hard, 300)
    assert raise_open_files_limit(wanted) == wanted
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
    assert open_files_limit() == wanted
    # Never lowered: a deployment that set more keeps it.
    assert raise_open_files_limit(200) == wanted
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == wanted


# By path: `make test` does not put the venv's bin directory on PATH.
DSP_SERVE = [str(BIN / "uid2-dsp"), "serve", "--name", "d", "--listen", "127.0.0.1:0"]


def _limited_to(files: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))


def test_a_service_refuses_a_limit_too_low_to_serve_with_one_line() -> None:
    """Misconfiguration review: under `ulimit -n 16` the operator aborted in gRPC core
    ("epoll_create1 unavailable", SIGABRT, exit 134)."""
    done = subprocess.run(
        DSP_SERVE,
        preexec_fn=_limited_to(16),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "uid2-dsp: error: cannot start: the limit on open files (ulimit -n) is 16, and its hard "
        f"limit allows no more; a service needs at least {MIN_OPEN_FILES}"
    ]


def test_a_service_serves_at_the_least_limit_it_takes() -> None:
    proc = subprocess.Popen(
        DSP_SERVE,
        preexec_fn=_limited_to(MIN_OPEN_FILES),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        events = (json.loads(line) for line in proc.stdout if line.startswith("{"))
        serving = next(e for e in events if e["event"] in ("serving", "stopped"))
        assert serving["event"] == "serving"
        assert serving["open_files_limit"] == MIN_OPEN_FILES
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
