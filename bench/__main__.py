"""Run every ``bench/*_bench.py`` module's ``run()`` in name order.

A failing module is reported and the rest still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    failed: list[str] = []
    names = sorted(p.stem for p in here.glob("*_bench.py"))
    if not names:
        print("no bench/*_bench.py modules found")
        return 1
    for name in names:
        print(f"== {name}")
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            run = getattr(module, "run", None)
            if not callable(run):
                raise TypeError(f"bench.{name} has no run() function")
            run()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            print(f"!! {name} failed")
        print(f"== {name} took {time.perf_counter() - start:.1f} s\n")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
