"""Benchmarks: every ``bench/*_bench.py`` module exposes ``run() -> dict``; ``python -m bench``."""
