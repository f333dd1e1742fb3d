"""Every waiver in hand-written Python says why: a `# type: ignore[...]`, `# noqa` or
`# pragma: no cover` comment is followed, on its line, by a short reason
(`# noqa: S310  # fixed localhost URL`). (`# fmt: skip` keeps a command line or a table as
written, which says why by itself.) Hand-written is every Python file git knows of or would
add, outside the generated gen/ and the Node client's clients/."""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
NOT_HAND_WRITTEN = ("gen/", "clients/")

# What mypy and ruff read as a waiver anywhere in a comment, with the codes it names.
_WAIVER = re.compile(
    r"#\s*type:\s*ignore(?:\[[^\]]*\])?"
    r"|#\s*noqa(?::\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?"
    r"|#\s*pragma:\s*no\s*cover",
)
_WORD = re.compile(r"[A-Za-z]{2,}")


def bare_waivers(source: str) -> list[tuple[int, str]]:
    """(line, comment) of each waiver with no reason after it on its line."""
    found = []
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        waivers = list(_WAIVER.finditer(tok.string))
        # A reason is what follows the last waiver: a second waiver is no reason for the first.
        if waivers and not _WORD.search(tok.string[waivers[-1].end() :]):
            found.append((tok.start[0], tok.string))
    return found


def _hand_written() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    paths = [REPO / p for p in listed if not p.startswith(NOT_HAND_WRITTEN)]
    return [p for p in paths if p.is_file()]  # a deleted, not yet committed file is gone


def test_every_waiver_in_hand_written_python_says_why() -> None:
    files = _hand_written()
    assert len(files) > 100, "git listed too few files: is this the repository?"
    bare = [
        f"{path.relative_to(REPO)}:{line}: {comment}"
        for path in files
        for line, comment in bare_waivers(path.read_text("utf-8"))
    ]
    assert bare == [], "waivers that do not say why:\n" + "\n".join(bare)


@pytest.mark.parametrize(
    "line",
    [
        "x = f()  # type: ignore[arg-type]\n",
        "x = f()  # type: ignore\n",
        "x = f()  # noqa: S310\n",
        "x = f()  # noqa: S105, S106\n",
        "x = f()  # noqa\n",
        "x = f()  # type: ignore[misc]  # \n",
        "x = f()  # type: ignore[misc]  # noqa: E501\n",
        "x = f()  # a reason first is not after it  # noqa: S310\n",
        "x = f()  # pragma: no cover\n",
    ],
)
def test_a_waiver_without_a_reason_is_found(line: str) -> None:
    assert [n for n, _ in bare_waivers("import os\n" + line)] == [2]


@pytest.mark.parametrize(
    "line",
    [
        "x = f()  # type: ignore[arg-type]  # grpc is untyped\n",
        "x = f()  # noqa: S310  # fixed localhost URL\n",
        "x = f()  # noqa: S105 - a status name\n",
        "x = f()  # noqa: S105 (a status, not a secret)\n",
        "x = f()  # type: ignore[misc]  # noqa: E501  # both: a long, untyped line\n",
        'x = "# noqa: S310"  # a string, not a comment\n',
        "x = f()  # pragma: no cover - argparse refuses anything else\n",
        "x = f()  # no waiver here\n",
    ],
)
def test_a_waiver_with_a_reason_passes(line: str) -> None:
    assert bare_waivers("import os\n" + line) == []
