"""The suite installs elsewhere: the wheel built from the repository holds every module of the
packages (the generated stubs included), names the four console scripts of the contract, and
runs from outside the repository with nothing of it on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "uid2-operator": "operator_svc:console",
    "uid2-publisher": "publisher_svc:console",
    "uid2-ssp": "ssp_svc:console",
    "uid2-dsp": "dsp_svc:console",
}


# The repository's packages that are not shipped: its tests, benchmarks, demo and tools.
NOT_SHIPPED = {"tests", "bench", "demo", "scripts"}


def _package_dirs() -> list[Path]:
    """Every top-level package of the repository and of its generated stubs (gen/) that the
    wheel is to hold: a package added later is checked without being listed here."""
    return [
        path
        for where in (ROOT, ROOT / "gen")
        for path in sorted(where.iterdir())
        if (path / "__init__.py").is_file() and path.name not in NOT_SHIPPED
    ]


def _modules(base: Path, dirs: list[Path]) -> set[str]:
    return {
        str(module.relative_to(base))
        for top in dirs
        for module in top.rglob("*.py")
        if "__pycache__" not in module.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for top in _package_dirs():
        shutil.copytree(
            top,
            src / top.relative_to(ROOT),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(dist), str(src)],
        check=True,
        timeout=300,
    )  # fmt: skip
    (built,) = dist.glob("*.whl")
    return built


def test_the_wheel_holds_every_module_and_the_contracts_scripts(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    dirs = _package_dirs()
    assert {top.name for top in dirs} >= {"operator_svc", "publisher_svc", "ssp_svc", "uid2"}
    wanted = _modules(ROOT, [d for d in dirs if d.parent == ROOT])
    wanted |= _modules(ROOT / "gen", [d for d in dirs if d.parent == ROOT / "gen"])
    assert wanted - names == set()
    assert "uid2/operator/v1/operator_pb2_grpc.py" in names
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in scripts


# Runs one console script from the unpacked wheel, with the editable install of the repository
# (the venv's __editable__ finder and path hook) taken off the import system first, then checks
# that no module was loaded from the repository (its venv, which may sit inside it, aside).
_RUN = """
import importlib, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
repository, script, target = sys.argv[1:4]
module, function = target.split(":")
sys.argv = [script, *sys.argv[4:]]
try:
    code = getattr(importlib.import_module(module), function)()
finally:
    loaded = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
    ours = [f for f in loaded if f.startswith(repository) and not f.startswith(sys.prefix)]
    assert not ours, ours
sys.exit(code)
"""


def test_the_installed_commands_run_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    runner = tmp_path / "run_script.py"
    runner.write_text(_RUN)
    # Nothing of the repository on the path: only the wheel's files and the dependencies.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": str(installed)
    }
    for script, target in SCRIPTS.items():
        argv = [sys.executable, str(runner), str(ROOT) + os.sep, script, target]
        if script == "uid2-operator":
            argv += ["init", "--data-dir", str(tmp_path / "op")]
        else:
            argv += ["serve", "--help"]
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (script, done.stderr)
        assert script in done.stdout or '"initialised": true' in done.stdout
