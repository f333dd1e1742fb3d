"""The SSP's enums between proto and the publisher's domain (publisher_svc.ssp_enums)."""

from __future__ import annotations

from publisher_svc.model import AuctionOutcome, TokenDisposition
from publisher_svc.ssp_enums import (
    disposition_from_proto,
    disposition_to_proto,
    outcome_from_proto,
    outcome_to_proto,
)
from uid2.ssp.v1 import ssp_pb2


def test_every_proto_value_round_trips_through_its_domain_member() -> None:
    for value in ssp_pb2.AuctionOutcome.DESCRIPTOR.values:
        member = outcome_from_proto(value.number)
        assert value.name == "AUCTION_OUTCOME_" + member.name
        assert outcome_to_proto(member) == value.number
    for value in ssp_pb2.TokenDisposition.DESCRIPTOR.values:
        disposition = disposition_from_proto(value.number)
        assert value.name == "TOKEN_DISPOSITION_" + disposition.name
        assert disposition_to_proto(disposition) == value.number


def test_every_domain_member_has_a_proto_value() -> None:
    # A member the proto lacks could not be sent back in the publisher's own response.
    assert {outcome_from_proto(outcome_to_proto(m)) for m in AuctionOutcome} == set(AuctionOutcome)
    assert {disposition_from_proto(disposition_to_proto(m)) for m in TokenDisposition} == set(
        TokenDisposition
    )
    assert disposition_to_proto(TokenDisposition.DROPPED_OPTOUT) == (
        ssp_pb2.TOKEN_DISPOSITION_DROPPED_OPTOUT
    )


def test_a_value_newer_than_us_is_unspecified() -> None:
    # proto3 enums are open: an SSP on a newer schema may answer a number we have no name for.
    newest = max(v.number for v in ssp_pb2.AuctionOutcome.DESCRIPTOR.values)
    assert outcome_from_proto(newest + 1) is AuctionOutcome.UNSPECIFIED
    newest = max(v.number for v in ssp_pb2.TokenDisposition.DESCRIPTOR.values)
    assert disposition_from_proto(newest + 1) is TokenDisposition.UNSPECIFIED
