"""The SSP's enums, between their proto values (uid2.ssp.v1, which the publisher's own API
reuses) and the publisher's domain enums. Built once from the descriptors: a proto value with
no domain member fails at import, so the two cannot drift apart unnoticed."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from google.protobuf.descriptor import EnumDescriptor

from publisher_svc.model import AuctionOutcome, TokenDisposition
from uid2.ssp.v1 import ssp_pb2

E = TypeVar("E", bound=Enum)


def _from_proto(descriptor: EnumDescriptor, prefix: str, domain: type[E]) -> dict[int, E]:
    return {v.number: domain[v.name.removeprefix(prefix)] for v in descriptor.values}


_OUTCOMES = _from_proto(ssp_pb2.AuctionOutcome.DESCRIPTOR, "AUCTION_OUTCOME_", AuctionOutcome)
_DISPOSITIONS = _from_proto(
    ssp_pb2.TokenDisposition.DESCRIPTOR, "TOKEN_DISPOSITION_", TokenDisposition
)
_OUTCOME_NUMBERS = {member: number for number, member in _OUTCOMES.items()}
_DISPOSITION_NUMBERS = {member: number for number, member in _DISPOSITIONS.items()}


def outcome_from_proto(value: int) -> AuctionOutcome:
    # proto3 enums are open: an SSP on a newer schema may answer a number we have no name for.
    return _OUTCOMES.get(value, AuctionOutcome.UNSPECIFIED)


def disposition_from_proto(value: int) -> TokenDisposition:
    return _DISPOSITIONS.get(value, TokenDisposition.UNSPECIFIED)


def outcome_to_proto(outcome: AuctionOutcome) -> ssp_pb2.AuctionOutcome.ValueType:
    return ssp_pb2.AuctionOutcome.ValueType(_OUTCOME_NUMBERS[outcome])


def disposition_to_proto(disposition: TokenDisposition) -> ssp_pb2.TokenDisposition.ValueType:
    return ssp_pb2.TokenDisposition.ValueType(_DISPOSITION_NUMBERS[disposition])
