"""The proto toolchain's guards can fail: stub drift is caught, buf lint rejects a
non-STANDARD proto and a field without a comment, and `make lint`'s FILE breaking check,
against the committed baseline (protos/baseline.binpb), rejects a removed field."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_drift_check_passes_on_the_committed_stubs_and_fails_on_an_edit(tmp_path: Path) -> None:
    gen = tmp_path / "gen"
    shutil.copytree(REPO / "gen", gen, ignore=shutil.ignore_patterns("__pycache__"))
    script = str(REPO / "scripts" / "gen_protos.py")
    assert _run(sys.executable, script, "--check", str(gen)).returncode == 0
    stub = gen / "uid2" / "operator" / "v1" / "operator_pb2.pyi"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    result = _run(sys.executable, script, "--check", str(gen))
    assert result.returncode == 1 and "operator_pb2.pyi" in result.stdout


def _module_copy(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(REPO / "protos", root / "protos")
    shutil.copy(REPO / "buf.yaml", root / "buf.yaml")
    return root


def test_buf_lint_rejects_a_non_standard_enum(tmp_path: Path) -> None:
    root = _module_copy(tmp_path, "lint")
    assert _run(str(BIN / "buf"), "lint", cwd=root).returncode == 0
    proto = root / "protos" / "uid2" / "operator" / "v1" / "operator.proto"
    proto.write_text(proto.read_text() + "\n// A bad enum.\nenum Bad {\n  // x\n  FIRST = 0;\n}\n")
    result = _run(str(BIN / "buf"), "lint", cwd=root)
    assert result.returncode != 0 and "_UNSPECIFIED" in result.stdout + result.stderr


def test_buf_lint_rejects_a_field_without_a_comment(tmp_path: Path) -> None:
    root = _module_copy(tmp_path, "comments")
    proto = root / "protos" / "uid2" / "operator" / "v1" / "operator.proto"
    proto.write_text(
        proto.read_text()
        + "\n// A message whose field says nothing.\nmessage Bare {\n  int32 n = 1;\n}\n"
    )
    result = _run(str(BIN / "buf"), "lint", cwd=root)
    assert result.returncode != 0 and 'Field "n" should have a non-empty comment' in result.stdout


def _lint_breaking_command() -> list[str]:
    """The `buf breaking` command `make lint` runs, as make would run it (dry run)."""
    dry = _run("make", "--dry-run", "--always-make", "lint")
    lines = [line for line in dry.stdout.splitlines() if "buf breaking" in line]
    assert len(lines) == 1, dry.stdout + dry.stderr
    argv = shlex.split(lines[0])
    assert Path(argv[0]).name == "buf" and argv[1] == "breaking"
    return [str(BIN / "buf"), *argv[1:]]


def test_lint_checks_breaking_changes_against_the_committed_baseline() -> None:
    command = _lint_breaking_command()
    against = command[command.index("--against") + 1]
    # A file in the repository (so a clean clone has it), not a git ref that may be absent.
    assert (REPO / against).is_file()
    tracked = _run("git", "ls-files", "--error-unmatch", against)
    assert tracked.returncode == 0, f"{against} is not committed"
    # buf lints and formats only .proto files: the baseline image is not part of the module.
    listed = _run(str(BIN / "buf"), "ls-files")
    assert listed.returncode == 0 and against not in listed.stdout
    same = _run(*command)
    assert same.returncode == 0, same.stdout + same.stderr


def test_lint_rejects_a_removed_field_even_once_committed(tmp_path: Path) -> None:
    # A copy of the module with the field gone stands for a commit that removed it: the check
    # reads only the files and the committed baseline, so it fails there as on a clean clone.
    after = _module_copy(tmp_path, "after")
    proto = after / "protos" / "uid2" / "operator" / "v1" / "operator.proto"
    text = proto.read_text()
    field = "  string refresh_response_key = 6;\n"
    assert field in text
    proto.write_text(text.replace(field, ""))
    result = _run(*_lint_breaking_command(), cwd=after)
    assert result.returncode != 0 and "refresh_response_key" in result.stdout + result.stderr


def test_the_package_asks_for_a_protobuf_the_generated_stubs_run_on() -> None:
    """Deployment review: pyproject asked for protobuf>=6.31, while the stubs refuse at import
    any runtime older than the protoc that made them (7.35.1); only another package's pin kept
    an install working."""
    import tomllib

    wanted = re.compile(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),")
    made_for = {
        tuple(int(n) for n in found.groups())
        for stub in (REPO / "gen").rglob("*_pb2.py")
        for found in [wanted.search(stub.read_text())]
        if found is not None
    }
    assert made_for, "no generated stub names its protobuf runtime"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (bound,) = [d.removeprefix("protobuf>=") for d in deps if d.startswith("protobuf")]
    assert tuple(int(n) for n in bound.split(".")) >= max(made_for), (bound, max(made_for))
