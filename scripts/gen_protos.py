"""Generate Python modules, gRPC stubs and .pyi stubs from protos/ (the one generation command).

Usage: gen_protos.py OUT_DIR          regenerate OUT_DIR from protos/
       gen_protos.py --check OUT_DIR  exit 1 when OUT_DIR differs from what protos/ generates
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> None:
    # The mypy plugins live beside this interpreter (the venv's bin), which may not be on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages (not namespace ones) so setuptools, mypy and pytest agree on the layout.
    for d in [p for p in out.rglob("*") if p.is_dir()]:
        (d / "__init__.py").touch()
    (out / "py.typed").unlink(missing_ok=True)


def tree(d: Path) -> set[str]:
    files = (p for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return {str(p.relative_to(d)) for p in files}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    out = Path(next(a for a in argv if not a.startswith("--"))).resolve()
    if not check:
        # Generate aside, then swap: a proto that fails to compile leaves gen/ as it was.
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            fresh = Path(tmp) / "gen"
            generate(fresh)
            if out.exists():
                shutil.rmtree(out)
            fresh.rename(out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = tree(fresh), tree(out) if out.exists() else set()
        drift = sorted(want ^ have)
        changed = (f for f in want & have if not filecmp.cmp(fresh / f, out / f, shallow=False))
        drift += sorted(changed)
        if drift:
            print("generated stubs drift from protos/ (run `make protos`):", *drift, sep="\n  ")
            return 1
    print("generated stubs match protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
