"""How the publisher names the SSP's enum values in its AdDecision."""

from __future__ import annotations

from publisher_svc.ssp_client import _DISPOSITIONS, _OUTCOMES, _name
from uid2.ssp.v1 import ssp_pb2


def test_known_values_lose_their_prefix() -> None:
    assert _name(_OUTCOMES, ssp_pb2.AUCTION_OUTCOME_FILLED, "AUCTION_OUTCOME_") == "FILLED"
    dropped = ssp_pb2.TOKEN_DISPOSITION_DROPPED_OPTOUT
    assert _name(_DISPOSITIONS, dropped, "TOKEN_DISPOSITION_") == "DROPPED_OPTOUT"


def test_a_value_newer_than_us_is_unspecified() -> None:
    # proto3 enums are open: an SSP on a newer schema may answer a number we have no name for.
    newest = max(_OUTCOMES.values_by_number)
    assert _name(_OUTCOMES, newest + 1, "AUCTION_OUTCOME_") == "UNSPECIFIED"
