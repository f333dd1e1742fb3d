"""A caller's x-request-id is logged as it came, so only id shapes are kept: never one that
could be DII or a hash of it."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest

from svc_common.edge_log import request_id

_SHA = hashlib.sha256(b"user@example.com").digest()


@pytest.mark.parametrize(
    "rid",
    [
        "req-123",
        "one",
        "3f2b8c1e-0d4a-4c55-9b7e-1a2b3c4d5e6f",  # a UUID
        "4bf92f3577b34da6a3ce929d0e0e4736",  # a W3C trace id
        "0123456789abcdef",
        "svc.publisher:login-42",
        "4BF92F3577B34DA6A3CE929D0E0E4736",  # upper-case hex
        "req-2026-11-29-checkout.page:render",
        "0ujtsYcgvSTl8PAuAdqWYSMnLOv",  # a KSUID
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # a ULID
        "V1StGXR8_Z5jdHi6B-myTbcXk9s2",  # a Nano ID, 28 characters
        "7n42DGM5Tflk9n8mt7Fhc7",  # a base62 UUID
        "CheckoutService-Order-12345",
        "PublisherA-Batch-20261129",
        "5f2b8c1e0d4a4c559b7e1a2b",  # a Mongo ObjectId
        "3f2b8c1e-0d4a-4c55-9b7e-123456789012",  # a UUID with 12 digits in a row, by chance
        "4bf92f3577b34da6a3ce929123456789",  # a trace id with 9 digits in a row
        "req-20261129-checkout",  # a date: 8 digits
        "V1StGXR8Z5jdHi6BmyTbc",  # a Nano ID without '_' or '-' (21 characters)
        "req-3f2b8c1e-0d4a-4c55-9b7e-123456789012",  # a UUID with a prefix
        # ids behind a prefix, one case per segment (a reviewer's, dropped by a first rule
        # against pieces of tokens)
        "req_01ARZ3NDEKTSV4RRFFQ69G5FAV",  # a ULID
        "01GQEC2QTSAZ8Z9X4N4XBDK11T-lhr",  # Fly.io's fly-request-id
        "trace-4BF92F3577B34DA6A3CE929D0E0E4736",
        "Req-4bf92f3577b34da6a3ce929d0e0e4736",
        "req-6F9619FF-8B86-D011-B42D-00C04FC964FF",  # a GUID
    ],
)
def test_id_shapes_are_kept(rid: str) -> None:
    assert request_id(rid) == rid


@pytest.mark.parametrize(
    "rid",
    [
        "user@example.com",
        "+15551234567",
        "15551234567",
        base64.b64encode(_SHA).decode(),
        _SHA.hex(),
        base64.urlsafe_b64encode(_SHA).decode().rstrip("="),
        "1-800-555-0199",
        "555.123.4567",
        "-15551234567",
        ".5551234567",
        "has space",
        "x" * 65,
        # an API key of the operator's and of the SSP's, sent as the request id
        "UID2-C-9dbc0e4a93f6-I-6Hw2tfgwGa3dQlxqthemTDGU_G0NKiaj7tJKnY_nA",
        "UID2-SSP-3f9a1c2b4d5e6f70.tPqR8vXz2LmN4bK7wYc1dF6gH0jS5aEu",
        "euid-c-12-abc",  # the prefix says what it is, whatever follows
        "Gq3Zx9Lm2Pw8Rt6Vy4Nb7KcQ1sT5uW8yZ0aD",  # 36 letters and digits of a random secret
        "caf\u00e9",
        # a reviewer's leaks past the earlier rules: a phone behind a prefix, a SHA-256 in hex
        # cut short (either case), a raw UID2 in hex, an API key or a token cut short
        "tel:12065557781",
        "ph-12065557781",
        "12065557781abc",
        _SHA.hex()[:63],
        _SHA.hex()[:60].upper(),
        _SHA.hex()[:40],
        "ID2-C-36dab4e6c2a5-1gV3VcIhUOFkHNyOVUc20dyDmZoM_",
        "A4AAAAABauWOMdw7njZvi_T15Y7SwE-",
        "CheckoutServiceOrder12345",  # no separators: as random as a secret to this filter
        # a phone number in groups inside an id (a reviewer's, logged before)
        "user-206-555-7781",
        "cust-44-20-7946-0958",
        "tel.206.555.7781",
        "u:1:206:555:7781",
        # a SHA-256 in base64url behind a prefix, whose '-' and '_' cut it into short runs
        # (about 1 in 36 such ids got through: shaped like this one)
        "req-" + "Ab-cD_eF-gH_iJ-kL_mN-oP_qR-sT_uV-wX_yZ-ab_cde",
        # pieces of a token and of an API key, 29-40 characters, whose '-' and '_' cut them
        # into runs too short for the rules above (a privacy reviewer's, logged before)
        "kuoJhsLJroMS8ZaNNV9-XEqcyJTM-fmT4Z5pCMmG",
        "A4AAAAAB3vT_hY4Po6LvJSdhQm1S__kQkZFiKXcr",
        "ID2-C-8c9a4ba1b020-wYd0JDeLSsFB8",
        "T5Y7S-wE_kuoJ-hsLJr-oMS8Z-aNNV9",
        "",
        None,
    ],
)
def test_anything_else_gets_a_new_id(rid: str | None) -> None:
    new = request_id(rid)
    assert new != rid and len(new) == 16 and int(new, 16) >= 0


def test_no_40_character_piece_of_a_token_is_kept_as_an_id() -> None:
    """Every 40-character window of a v4 advertising token (base64url, as tokens are sent)."""
    rng = random.Random(7)  # a token's bytes look random; fixed so the test is the same each run
    token = "A4AAAAAB" + base64.urlsafe_b64encode(rng.randbytes(120)).decode().rstrip("=")
    windows = [token[i : i + 40] for i in range(len(token) - 39)]
    assert [w for w in windows if request_id(w) == w] == []
