"""The proto toolchain's guards can fail: stub drift is caught, buf lint rejects a
non-STANDARD proto, and buf's FILE breaking check rejects a removed field."""

from __future__ import annotations

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


def test_buf_breaking_rejects_a_removed_field(tmp_path: Path) -> None:
    before = _module_copy(tmp_path, "before")
    after = _module_copy(tmp_path, "after")
    proto = after / "protos" / "uid2" / "operator" / "v1" / "operator.proto"
    text = proto.read_text()
    field = "  string refresh_response_key = 6;\n"
    assert field in text
    proto.write_text(text.replace(field, ""))
    result = _run(str(BIN / "buf"), "breaking", str(after), "--against", str(before))
    assert result.returncode != 0 and "refresh_response_key" in result.stdout + result.stderr
    same = _run(str(BIN / "buf"), "breaking", str(before), "--against", str(before))
    assert same.returncode == 0, same.stderr
