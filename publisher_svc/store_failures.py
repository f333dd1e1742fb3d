"""The store refusing to keep what the operator answered a stored identity's refresh: named
for what the caller may still do about the answer."""

from __future__ import annotations

from svc_common.sqlite_db import StoreUnavailable


class _OperatorAnswerNotKept(StoreUnavailable):
    """The operator answered a stored identity's refresh, but the store refused to keep what it
    said: the store's own failure (`cause`: its kind, reason and message), named for what the
    caller may still do about the answer."""

    def __init__(self, cause: StoreUnavailable) -> None:
        super().__init__(cause.kind, cause.reason, cause.message)


class RefreshNotKept(_OperatorAnswerNotKept):
    """The operator refreshed a stored identity, but the store refused the new one. The held
    identity is as good as it was (its refresh token still works): a caller may serve its
    unexpired token. (An opt-out the store cannot record is still answered as an opt-out.)"""


class OptOutNotRecorded(_OperatorAnswerNotKept):
    """The operator answered a stored identity's refresh with OPTOUT, but the store refused to
    record it. The answer stands all the same: a user's call gets OPTOUT and an impression no
    token (else it would go out with the held one). Unrecorded, the identity stays in the store
    but the opt-out is held in memory (Publisher.unrecorded_optouts), so the user is answered
    OPTOUT without asking the operator again until the store records it (only when that set
    is full does the next refresh ask again); the background refresher pauses as for any
    write the store refuses."""
