"""Test-side names for the process runner the demo uses too (one implementation)."""

from demo.processes import BIN, ServiceProcess, run_cli, wait_until

__all__ = ["BIN", "ServiceProcess", "run_cli", "wait_until"]
