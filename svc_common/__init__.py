"""Pieces every service shares: the error model, the edge interceptor, logging, server bootstrap,
clocks, retry timing (`backoff`), the client-side retry policy and setting parsers. Domain code may
import `errors`, `clock`, `backoff` and `impression_limits` only."""
