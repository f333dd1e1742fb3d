"""Pure-Python UID2 cryptography: normalisation, salting, keys, tokens and the HTTP envelope.

Nothing here does I/O, reads a clock or global randomness: callers pass ``now`` and an ``rng``.
"""
