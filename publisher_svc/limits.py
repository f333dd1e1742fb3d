"""The publisher's limits and their defaults: how long an impression waits on a refresh, how
many callers' calls wait on each peer, when a peer counts as slow, how many calls wait on one
user. Read by the domain (publisher.py) and by the configuration and CLI that set them."""

from __future__ import annotations

# How long an impression may wait for a due refresh before it goes out with the held token,
# or without one when that has expired.
DEFAULT_SERVE_REFRESH_BUDGET_S = 0.3

# At most this many callers' calls wait on the operator at once, and on the SSP (call_bound.py:
# a frozen peer would otherwise hold every worker thread, and calls that never ask it would
# queue behind). The background refresher's calls, on threads of their own, are not counted.
# When all are taken and the oldest has waited PEER_SLOW_S, the peer is slow: the next call is
# answered at once as if it were unreachable (UNAVAILABLE OPERATOR_BUSY / SSP_BUSY; a held
# unexpired token is still served). Otherwise the peer is only busy, and the call waits up to
# PEER_SLOW_S for a slot. The server's worker pool has a thread for every slot of both and
# SPARE_THREADS more (server.py), so calls that ask neither peer are served even when both
# are frozen.
DEFAULT_OPERATOR_CALLS_MAX = 24
DEFAULT_SSP_CALLS_MAX = 24
PEER_SLOW_S = 0.5
OPERATOR_BUSY = "OPERATOR_BUSY"  # PeerError.reason of a call not made: too many wait already
SSP_BUSY = "SSP_BUSY"
# A caller's calls that wait for one user's lock at once, while its holder has waited on the
# operator PEER_SLOW_S or more; past it a call is answered at once: held unexpired token, else
# OPERATOR_BUSY. (Against a healthy operator a burst of one user's calls just queues.)
MAX_WAITING_PER_USER = 4
# How long a stop waits for its last try at recording opt-outs the store refused earlier.
UNRECORDED_LAST_TRY_S = 1.0
