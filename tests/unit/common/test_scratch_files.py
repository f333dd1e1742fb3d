"""Scratch files left by a process killed with -9 are removed by the next one made beside them;
one whose maker still runs, or that may not be locked yet, is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from svc_common import store_backup
from svc_common.scratch_files import MIN_LEFTOVER_AGE_S, scratch_file, sweep_leftovers
from svc_common.sqlite_db import open_db

_OLD = time.time() - MIN_LEFTOVER_AGE_S - 5

# A maker that writes a large scratch file, then is killed with -9 (or waits to be).
_MAKER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from svc_common.scratch_files import scratch_file
    with scratch_file(Path(sys.argv[1]), sys.argv[2]) as path:
        path.write_bytes(b"x" * 1_000_000)
        path.with_name(path.name + "-journal").write_bytes(b"j")
        os.utime(path, (0, 0))  # as old as can be: only its lock keeps it
        print(path, flush=True)
        if sys.argv[3] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """
)


def _maker(target: Path, kind: str, end: str) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _MAKER, str(target), kind, end],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def _age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (_OLD, _OLD))


def test_a_killed_makers_file_is_removed_by_the_next_backup(tmp_path: Path) -> None:
    proc, left = _maker(tmp_path / "b-monday", "partial", "die")
    assert proc.wait(timeout=30) == -signal.SIGKILL
    journal = left.with_name(left.name + "-journal")
    assert left.exists() and journal.exists()
    _age(journal)

    (tmp_path / "d").mkdir()
    open_db(
        tmp_path / "d" / "s.sqlite3", RuntimeError, schema="CREATE TABLE t (v INTEGER);"
    ).close()
    check = store_backup.requires_tables(RuntimeError, "test", "t", version=1)
    store_backup.backup(tmp_path / "d" / "s.sqlite3", tmp_path / "b-tuesday", RuntimeError, check)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-tuesday", "d"]


def test_a_file_whose_maker_still_runs_is_kept_however_old(tmp_path: Path) -> None:
    proc, busy = _maker(tmp_path / "store", "new", "wait")
    try:
        journal = busy.with_name(busy.name + "-journal")
        _age(journal)
        assert sweep_leftovers(tmp_path, "new") == 0
        assert busy.exists() and journal.exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # Its maker gone, the same file is a leftover.
    assert sweep_leftovers(tmp_path, "new") == 2
    assert list(tmp_path.iterdir()) == []


def test_only_old_files_of_the_kind_asked_are_removed(tmp_path: Path) -> None:
    young = tmp_path / ".s.new-locked-0123456789ab"  # maybe made, not yet locked, this moment
    other_kind = tmp_path / ".s.partial-locked-0123456789ab"
    not_ours = [
        tmp_path / name
        for name in (
            ".s.new-locked-xyz",
            "s.new-locked-0123456789ab",
            ".s.new-locked-0123456789abc",
            ".s.new-0123456789ab",  # an older version's, never locked: maybe still in use
        )
    ]
    orphan_wal = tmp_path / ".s.new-locked-ba9876543210-wal"  # its database removed first
    for path in (young, other_kind, *not_ours, orphan_wal):
        path.write_bytes(b"x")
    _age(other_kind, *not_ours, orphan_wal)

    assert sweep_leftovers(tmp_path, "new") == 1
    assert not orphan_wal.exists()
    assert all(p.exists() for p in (young, other_kind, *not_ours))
    assert sweep_leftovers(tmp_path, "new", now=time.time() + MIN_LEFTOVER_AGE_S + 5) == 1
    assert not young.exists()


def test_a_scratch_file_is_private_locked_and_gone_after(tmp_path: Path) -> None:
    with scratch_file(tmp_path / "t", "new") as path:
        assert path.parent == tmp_path and path.name.startswith(".t.new-locked-")
        assert path.stat().st_mode & 0o777 == 0o600
        path.with_name(path.name + "-wal").write_bytes(b"w")
        _age(path)
        assert sweep_leftovers(tmp_path, "new") == 0  # its maker holds it
    assert list(tmp_path.iterdir()) == []


def test_a_directory_named_like_a_scratch_file_is_left_alone(tmp_path: Path) -> None:
    odd = tmp_path / ".s.new-locked-0123456789ab"
    (odd / "inside").mkdir(parents=True)
    _age(odd)
    assert sweep_leftovers(tmp_path, "new") == 0
    assert (odd / "inside").is_dir()
