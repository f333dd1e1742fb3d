"""A service raises its open-files limit as far as the hard limit allows, never lowers it."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from svc_common.fd_limit import open_files_limit, raise_open_files_limit


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
