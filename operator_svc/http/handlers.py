"""One function per HTTP endpoint: decrypted JSON in -> the SAME domain call the gRPC servicer
makes -> the official answer `{"status": ..., "body": ...}` out. No rule lives here; only the
official JSON shapes (reference §8 and what uid2-client 2.9.0 parses).

Each takes `(operator, client, payload)` and returns the answer to seal. Differences from gRPC
that the official API imposes:
- generate: the official API has no transparency-notice field, so HTTP callers are taken as
  having shown and had the notice accepted; a `tcf_consent_string` still goes to the consent
  rule. `optout_check` / `policy` are accepted and ignored (opt-out is always checked). A refused
  consent answers 200 `insufficient_user_consent`, as the official operator does.
- logout: the official /v2/token/logout (OPTOUT role) records an opt-out for the DII, answering
  `{"optout": "OK"}` (checked against the official operator's source: UIDOperatorVerticle's
  handleLogoutAsyncV2 calls invalidateTokensAsync, its opt-out); here it is the domain's
  `opt_out`, durable before the answer.
- identity/buckets: salt buckets rotated after `since_timestamp` (ISO 8601; a local time is UTC).
- client-generate (`client_side_request`): a page's own JSON body, not an envelope, and no API
  key (operator_svc.domain.client_side).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from operator_svc.domain.client_side import ClientSideRequest
from operator_svc.domain.dii import KINDS, dii_of_fields
from operator_svc.domain.mapping import MappedIdentity, UnmappedReason
from operator_svc.domain.operator import Operator
from operator_svc.domain.privacy import Privacy
from operator_svc.domain.state import Client
from operator_svc.domain.tokens import GenerateStatus, IdentityTokens
from operator_svc.http.errors import INSUFFICIENT_USER_CONSENT, OPTOUT, SUCCESS, client_error
from svc_common import json_text

Answer = dict[str, Any]


def identity_json(identity: IdentityTokens) -> dict[str, Any]:
    return {
        "advertising_token": identity.advertising_token,
        "refresh_token": identity.refresh_token,
        "identity_expires": identity.identity_expires,
        "refresh_expires": identity.refresh_expires,
        "refresh_from": identity.refresh_from,
        "refresh_response_key": identity.refresh_response_key,
    }


def _optional_str(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise client_error("INVALID_FIELD", f"{name} must be a string")
    return value


def _str_list(payload: dict[str, Any], name: str) -> list[str] | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise client_error("INVALID_FIELD", f"{name} must be a list of strings")
    return value


def _dii_lists(payload: dict[str, Any]) -> list[tuple[str, list[str]]]:
    lists = [(kind, items) for kind in KINDS if (items := _str_list(payload, kind)) is not None]
    if not lists:
        raise client_error(
            "MISSING_DII", "send at least one of the lists email, email_hash, phone, phone_hash"
        )
    return lists


def generate(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    kind, value = dii_of_fields(payload)
    tcf = _optional_str(payload, "tcf_consent_string")
    privacy = Privacy(transparency_notice_accepted=True, tcf_consent_string=tcf or "")
    outcome = operator.tokens.generate(client, kind, value, privacy)
    if outcome.status is GenerateStatus.OPTOUT:
        return {"status": OPTOUT}
    if outcome.status is GenerateStatus.INSUFFICIENT_CONSENT or outcome.identity is None:
        return {"status": INSUFFICIENT_USER_CONSENT}
    return {"status": SUCCESS, "body": identity_json(outcome.identity)}


def client_side_request(body: bytes, origin: str | None) -> ClientSideRequest:
    """The JSON body of /v2/token/client-generate (not enveloped: the page encrypts its payload
    itself), with the request's Origin header."""
    try:
        fields = json_text.loads(body)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise client_error("BAD_JSON", "json payload is not valid")
    subscription_id = fields.get("subscription_id")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise client_error("BAD_SUBSCRIPTION_ID", "bad subscription_id")
    parts = [fields.get(name) for name in ("payload", "iv", "public_key")]
    if not all(isinstance(p, str) and p for p in parts):
        raise client_error("MISSING_PARAMS", "required parameters: payload, iv, public_key")
    timestamp = _cstg_timestamp(fields.get("timestamp"))
    payload, iv, public_key = (str(p) for p in parts)
    return ClientSideRequest(
        subscription_id=subscription_id,
        payload=payload,
        iv=iv,
        public_key=public_key,
        timestamp_ms=timestamp,
        origin=origin,
        app_name=_optional_str(fields, "app_name"),
    )


def _cstg_timestamp(value: Any) -> int:
    """Epoch milliseconds, a JSON number or, as the UID2 Android SDK sends it, a string of
    digits (the official operator reads either into a Java long)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    # bool is an int to Python, never a timestamp to the SDKs.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise client_error("BAD_TIMESTAMP", "timestamp must be milliseconds since the epoch")
    return value


def validate(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    token = _optional_str(payload, "token") or ""
    kind, value = dii_of_fields(payload)
    return {"status": SUCCESS, "body": operator.tokens.validate(client, token, kind, value)}


def logout(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    kind, value = dii_of_fields(payload)
    operator.optouts.opt_out(client, kind, value)
    return {"status": SUCCESS, "body": {"optout": "OK"}}


def _map(
    operator: Operator, client: Client, payload: dict[str, Any]
) -> list[tuple[str, list[str], list[MappedIdentity]]]:
    lists = _dii_lists(payload)
    items = [(kind, v) for kind, values in lists for v in values]
    results = operator.mapper.map_identity(client, items)
    out: list[tuple[str, list[str], list[MappedIdentity]]] = []
    at = 0
    for kind, values in lists:
        out.append((kind, values, results[at : at + len(values)]))
        at += len(values)
    return out


def identity_map_v2(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    mapped: list[dict[str, Any]] = []
    unmapped: list[dict[str, Any]] = []
    for _, values, results in _map(operator, client, payload):
        for value, r in zip(values, results, strict=True):
            if r.unmapped is UnmappedReason.NONE:
                mapped.append(
                    {"identifier": value, "advertising_id": r.raw_uid, "bucket_id": r.bucket_id}
                )
            else:
                unmapped.append({"identifier": value, "reason": r.unmapped.value})
    return {"status": SUCCESS, "body": {"mapped": mapped, "unmapped": unmapped}}


def identity_map_v3(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    body: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for kind, _, results in _map(operator, client, payload):
        body[kind] = [
            {"u": r.raw_uid, "p": r.previous_raw_uid or None, "r": r.refresh_from // 1000}
            if r.unmapped is UnmappedReason.NONE
            else {"e": r.unmapped.value}
            for r in results
        ]
    return {"status": SUCCESS, "body": body}


def _since_ms(text: str | None) -> int:
    if not text:
        raise client_error("INVALID_SINCE", "since_timestamp is required (ISO 8601, UTC)")
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise client_error(
            "INVALID_SINCE", "since_timestamp must be ISO 8601, e.g. 2024-01-31T12:00:00"
        ) from None
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return max(0, int(since.timestamp() * 1000))


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None).isoformat("T", "milliseconds")
    )


def identity_buckets(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    since = _since_ms(_optional_str(payload, "since_timestamp"))
    buckets = operator.mapper.buckets_since(client, since)
    return {
        "status": SUCCESS,
        "body": [{"bucket_id": b, "last_updated": _iso(ts)} for b, ts in buckets],
    }


def optout_status(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    ids = _str_list(payload, "advertising_ids")
    if ids is None:
        raise client_error("MISSING_IDS", "advertising_ids (a list of raw UID2s) is required")
    found = operator.optouts.opt_out_status(client, ids, skip_malformed=True)
    return {
        "status": SUCCESS,
        "body": {"opted_out": [{"advertising_id": r, "opted_out_since": ts} for r, ts in found]},
    }


def key_sharing(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    return {"status": SUCCESS, "body": operator.keys.sharing_keys(client).to_json()}


def key_bidstream(operator: Operator, client: Client, payload: dict[str, Any]) -> Answer:
    return {"status": SUCCESS, "body": operator.keys.bidstream_keys(client).to_json()}
