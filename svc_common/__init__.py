"""Pieces every service shares: the error model, the edge interceptor, logging, server bootstrap,
clocks, the client-side retry policy and setting parsers. Domain code may import `errors`, `clock`
and `impression_limits` only."""
