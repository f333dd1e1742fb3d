"""Starts unary calls and cancels each at once, as fast as it can, for DUR seconds: run as
`python -m tests.support.cancel_flood PORT METHOD DUR` (a process of its own, so the flood is not
held back by the test's interpreter)."""

from __future__ import annotations

import sys
import time

import grpc


def main() -> None:
    port, method, duration = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    stop = time.monotonic() + duration
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        while time.monotonic() < stop:
            call.future(b"").cancel()


if __name__ == "__main__":
    main()
