"""Pieces every service shares: the error model, the edge interceptor, logging, server bootstrap,
clocks and the client-side retry policy. Domain code may import `errors` and `clock` only."""
