"""No record or result type puts DII, hashes of DII, raw UID2s, tokens, keys or secrets in its
repr: a repr is what a stray log line or a traceback prints.

Every sensitive field below holds a value containing SENTINEL; the repr must show none of them,
while equality must still see the hidden fields (hiding is for printing, not for comparing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dsp_svc.config import DspConfig
from operator_svc.admin import NewClient
from operator_svc.domain.mapping import MappedIdentity
from operator_svc.domain.state import Client
from operator_svc.domain.tokens import (
    GenerateOutcome,
    GenerateStatus,
    IdentityTokens,
    RefreshOutcome,
    RefreshStatus,
)
from operator_svc.http.envelope_io import OpenedRequest
from operator_svc.store.records import ClientRow, KeyRow, OptOutRow
from publisher_svc.config import PublisherConfig
from publisher_svc.model import DiiKind, HashedDii, Identity
from publisher_svc.model import Impression as PublisherImpression
from publisher_svc.results import ClientRefreshResult, Cookie, TokenResult, TokenStatus
from publisher_svc.store.sqlite import StoredIdentity
from ssp_svc.bid_request import Impression as SspImpression
from ssp_svc.config import SspConfig
from tests.unit.crypto.test_refresh import payload as refresh_payload
from tests.unit.crypto.tokens_helpers import payload as token_payload
from uid2_crypto.tokens import DecryptionStatus, DecryptResult

S = "SENTINEL"


# One set of sentinel tokens for both the operator's and the publisher's identity types.
_TOKENS: dict[str, Any] = dict(
    advertising_token=f"{S}-advertising-token",
    refresh_token=f"{S}-refresh-token",
    identity_expires=1,
    refresh_from=2,
    refresh_expires=3,
    refresh_response_key=f"{S}-response-key",
)


def _identity_tokens() -> IdentityTokens:
    return IdentityTokens(**_TOKENS)


def _publisher_identity() -> Identity:
    return Identity(**_TOKENS)


def _objects(tmp_path: Path) -> list[Any]:
    return [
        DecryptResult(DecryptionStatus.SUCCESS, raw_uid=f"{S}-raw-uid", site_id=5),
        token_payload(raw_uid=f"{S}-raw-uid-bytes-padded-to-32".encode()),
        refresh_payload(first_level_hash=f"{S}-first-level-hash-32-bytes!!".encode()),
        _identity_tokens(),
        GenerateOutcome(GenerateStatus.SUCCESS, _identity_tokens(), site_id=5),
        RefreshOutcome(
            RefreshStatus.SUCCESS, _identity_tokens(), site_id=5, response_key=f"{S}-old-key"
        ),
        MappedIdentity(
            raw_uid=f"{S}-raw-uid", bucket_id="b1", previous_raw_uid=f"{S}-previous-raw-uid"
        ),
        KeyRow(1, 2, 3, 4, 5, 6, secret=f"{S}-key-secret".encode()),
        ClientRow(
            client_id=1,
            key_id="kid",
            name="c",
            site_id=5,
            roles=("GENERATOR",),
            key_salt=f"{S}-salt".encode(),
            key_hash=f"{S}-api-key-hash".encode(),
            secret=f"{S}-client-secret",
            disabled=False,
            created_ms=0,
        ),
        OptOutRow(seq=1, flh=f"{S}-flh".encode(), opted_out_at_ms=0),
        Client(
            client_id=1,
            key_id="kid",
            name="c",
            site_id=5,
            roles=frozenset({"GENERATOR"}),
            key_salt=f"{S}-salt".encode(),
            key_hash=f"{S}-api-key-hash".encode(),
            secret=f"{S}-client-secret",
        ),
        OpenedRequest(
            payload={"email": f"{S}@example.com"}, nonce=b"\0" * 8, timestamp_ms=0, binary=False
        ),
        _publisher_identity(),
        HashedDii(DiiKind.EMAIL, f"{S}-dii-hash"),
        StoredIdentity("user-1", f"email:{S}-dii-hash", _publisher_identity()),
        PublisherImpression("example.com", "slot", 1.0, advertising_token=f"{S}-token"),
        Cookie("__uid2", f"{S}-cookie-value", 0),
        TokenResult(TokenStatus.SUCCESS, advertising_token=f"{S}-token", identity_expires=1),
        ClientRefreshResult(TokenStatus.SUCCESS, advertising_token=f"{S}-token"),
        PublisherConfig(
            listen="127.0.0.1:0",
            data_dir=str(tmp_path),
            operator_address="127.0.0.1:1",
            operator_api_key=f"{S}-operator-key",
            site_id=5,
            ssp_address="127.0.0.1:2",
            ssp_api_key=f"{S}-ssp-key",
        ),
        SspImpression("pub", "Pub", "example.com", "", "slot", 1.0, token=f"{S}-token"),
        SspConfig(data_dir=tmp_path, operator="127.0.0.1:1", operator_api_key=f"{S}-key"),
        DspConfig(name="dsp", operator="127.0.0.1:1", operator_api_key=f"{S}-key"),
        NewClient("c", 5, ("GENERATOR",), api_key=f"{S}-api-key", secret=f"{S}-secret"),
    ]


def test_reprs_carry_no_sensitive_value(tmp_path: Path) -> None:
    for obj in _objects(tmp_path):
        text = repr(obj)
        assert S not in text, text
        assert S.lower() not in text.lower(), text
        # Hiding is per field: the type's name still shows, so a repr stays useful.
        assert type(obj).__name__ in text


def _longer(value: str | bytes) -> str | bytes:
    """`value` with its first character (or byte) appended: a different value of the same type."""
    if isinstance(value, str):
        return value + value[:1]
    return value + value[:1]


def test_hidden_fields_still_count_for_equality(tmp_path: Path) -> None:
    """`repr=False` must not have been done with `compare=False`: two records differing only in
    a hidden value are different records."""
    checked = 0
    for obj in _objects(tmp_path):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.repr or not f.init or not isinstance(value, str | bytes):
                continue
            other = dataclasses.replace(obj, **{f.name: _longer(value)})
            assert other != obj, (type(obj).__name__, f.name)
            checked += 1
    assert checked >= 20
