"""What the benchmarks share: running the suite's console scripts, waiting for a service's
`serving` log line, summarising latencies, and writing results under bench/results/."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cli(*args: str) -> dict[str, Any]:
    """Runs a console script from the venv (`cli("uid2-operator", "init", ...)`); returns the
    JSON object it printed, or {}."""
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, check=True, timeout=60
    )
    out = done.stdout.strip()
    return dict(json.loads(out)) if out.startswith("{") else {}


def add_client(data_dir: Path | str, site_id: int, name: str, roles: str) -> dict[str, Any]:
    """`uid2-operator client add` on `data_dir`; its JSON (api_key, secret, ...)."""
    return cli(
        "uid2-operator", "client", "add", "--data-dir", str(data_dir),
        "--site-id", str(site_id), "--name", name, "--roles", roles,
    )  # fmt: skip


def wait_serving(log_path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """The `serving` event a service logs once ready (it carries the bound `port`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "serving":
                return event
        time.sleep(0.01)
    raise RuntimeError("the service did not start:\n" + log_path.read_text()[-2000:])


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    s = sorted(samples_ms)
    return {
        "n": len(s),
        "p50_ms": round(statistics.median(s), 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))], 3),
        "max_ms": round(s[-1], 3),
    }


def write_results(name: str, result: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
