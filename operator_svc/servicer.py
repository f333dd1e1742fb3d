"""The gRPC front door: proto in -> domain call -> proto out. No rules live here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from operator_svc.caller_log import bind_caller
from operator_svc.domain.mapping import UnmappedReason
from operator_svc.domain.operator import Operator
from operator_svc.domain.privacy import Privacy
from operator_svc.domain.state import Client
from operator_svc.domain.tokens import GenerateStatus, IdentityTokens, RefreshStatus
from svc_common import call_context
from svc_common.grpc_edge import bearer_token
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc
from uid2_crypto.keys import (
    MASTER_KEYSET_ID,
    PUBLISHED_MASTER_KEYSET_ID,
    PublishedKeys,
    published_keyset_id,
)

_GENERATE = {
    GenerateStatus.SUCCESS: operator_pb2.GENERATE_TOKEN_STATUS_SUCCESS,
    GenerateStatus.OPTOUT: operator_pb2.GENERATE_TOKEN_STATUS_OPTOUT,
    GenerateStatus.INSUFFICIENT_CONSENT: operator_pb2.GENERATE_TOKEN_STATUS_INSUFFICIENT_CONSENT,
}
_REFRESH = {
    RefreshStatus.SUCCESS: operator_pb2.REFRESH_TOKEN_STATUS_SUCCESS,
    RefreshStatus.OPTOUT: operator_pb2.REFRESH_TOKEN_STATUS_OPTOUT,
    RefreshStatus.EXPIRED_TOKEN: operator_pb2.REFRESH_TOKEN_STATUS_EXPIRED_TOKEN,
    RefreshStatus.INVALID_TOKEN: operator_pb2.REFRESH_TOKEN_STATUS_INVALID_TOKEN,
}
_UNMAPPED = {
    UnmappedReason.NONE: operator_pb2.UNMAPPED_REASON_UNSPECIFIED,
    UnmappedReason.OPTOUT: operator_pb2.UNMAPPED_REASON_OPTOUT,
    UnmappedReason.INVALID_IDENTIFIER: operator_pb2.UNMAPPED_REASON_INVALID_IDENTIFIER,
}


def dii_of(dii: operator_pb2.Dii) -> tuple[str, str]:
    """(kind, value); kind is "" when no identifier is set."""
    kind = dii.WhichOneof("value")
    if kind is None:
        return "", ""
    return kind, str(getattr(dii, kind))


def fill_identity(target: operator_pb2.Identity, identity: IdentityTokens) -> None:
    """Writes `identity` into the response's own Identity field (no separate message to copy:
    this runs on every generate and refresh)."""
    target.advertising_token = identity.advertising_token
    target.refresh_token = identity.refresh_token
    target.identity_expires = identity.identity_expires
    target.refresh_from = identity.refresh_from
    target.refresh_expires = identity.refresh_expires
    target.refresh_response_key = identity.refresh_response_key


def key_container_proto(published: PublishedKeys) -> operator_pb2.KeyContainer:
    """The keys a caller may have, as the proto twin of the official key JSON."""
    return operator_pb2.KeyContainer(
        caller_site_id=published.caller_site_id,
        master_keyset_id=PUBLISHED_MASTER_KEYSET_ID,
        default_keyset_id=published_keyset_id(published.default_keyset_id),
        token_expiry_seconds=published.token_expiry_seconds,
        identity_scope=published.identity_scope,
        allow_clock_skew_seconds=published.allow_clock_skew_seconds,
        max_bidstream_lifetime_seconds=published.max_bidstream_lifetime_seconds,
        max_sharing_lifetime_seconds=published.max_sharing_lifetime_seconds,
        keys=[
            operator_pb2.Key(
                id=k.id,
                # 0, not rendered, for another participant's key (see carries_keyset_id).
                keyset_id=published_keyset_id(k.keyset_id) if published.carries_keyset_id(k) else 0,
                # Master keys carry no site (0 is not rendered; the SDKs then assume -1).
                site_id=0 if k.keyset_id == MASTER_KEYSET_ID else k.site_id,
                created=k.created,
                activates=k.activates,
                expires=k.expires,
                secret=k.secret,
            )
            for k in published.keys
        ],
        site_data=[
            operator_pb2.SiteData(id=sid, domain_names=domains, app_names=apps)
            for sid, domains, apps in published.site_data
        ],
    )


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    def __init__(self, operator: Operator) -> None:
        self._op = operator

    def _client(self, context: Any) -> Client:
        return self._op.auth.authenticate(bearer_token(context), known=bind_caller)

    def GenerateToken(
        self, request: operator_pb2.GenerateTokenRequest, context: Any
    ) -> operator_pb2.GenerateTokenResponse:
        client = self._client(context)
        kind, value = dii_of(request.dii)
        privacy = Privacy(
            transparency_notice_accepted=request.privacy_settings.transparency_notice_accepted,
            tcf_consent_string=request.privacy_settings.tcf_consent_string,
        )
        outcome = self._op.tokens.generate(
            client, kind, value, privacy, request.on_behalf_of_site_id
        )
        if outcome.site_id != client.site_id:
            call_context.bind(on_behalf_of_site_id=outcome.site_id)
        response = operator_pb2.GenerateTokenResponse(status=_GENERATE[outcome.status])
        if outcome.identity is not None:
            fill_identity(response.identity, outcome.identity)
        return response

    def RefreshToken(
        self, request: operator_pb2.RefreshTokenRequest, context: Any
    ) -> operator_pb2.RefreshTokenResponse:
        outcome = self._op.tokens.refresh(request.refresh_token)
        if outcome.site_id:
            call_context.bind(site_id=outcome.site_id)
        response = operator_pb2.RefreshTokenResponse(status=_REFRESH[outcome.status])
        if outcome.identity is not None:
            fill_identity(response.identity, outcome.identity)
        return response

    def ValidateToken(
        self, request: operator_pb2.ValidateTokenRequest, context: Any
    ) -> operator_pb2.ValidateTokenResponse:
        client = self._client(context)
        kind, value = dii_of(request.dii)
        valid = self._op.tokens.validate(client, request.token, kind, value)
        return operator_pb2.ValidateTokenResponse(valid=valid)

    def MapIdentity(
        self, request: operator_pb2.MapIdentityRequest, context: Any
    ) -> operator_pb2.MapIdentityResponse:
        client = self._client(context)
        results = self._op.mapper.map_identity(client, [dii_of(d) for d in request.dii])
        response = operator_pb2.MapIdentityResponse()
        add = response.results.add
        for r in results:
            if r.unmapped is UnmappedReason.NONE:
                add(
                    raw_uid=r.raw_uid,
                    bucket_id=r.bucket_id,
                    refresh_from=r.refresh_from,
                    previous_raw_uid=r.previous_raw_uid,
                )
            else:
                add(unmapped_reason=_UNMAPPED[r.unmapped])
        call_context.bind(items=len(results))
        return response

    def OptOut(
        self, request: operator_pb2.OptOutRequest, context: Any
    ) -> operator_pb2.OptOutResponse:
        client = self._client(context)
        kind, value = dii_of(request.dii)
        return operator_pb2.OptOutResponse(
            opted_out_at=self._op.optouts.opt_out(client, kind, value)
        )

    def GetOptOutStatus(
        self, request: operator_pb2.GetOptOutStatusRequest, context: Any
    ) -> operator_pb2.GetOptOutStatusResponse:
        client = self._client(context)
        found = self._op.optouts.opt_out_status(client, list(request.raw_uids))
        response = operator_pb2.GetOptOutStatusResponse()
        for raw_uid, ts in found:
            response.opted_out.add(raw_uid=raw_uid, opted_out_at=ts)
        call_context.bind(items=len(request.raw_uids))
        return response

    def WatchOptOuts(
        self, request: operator_pb2.WatchOptOutsRequest, context: Any
    ) -> Iterator[operator_pb2.WatchOptOutsResponse]:
        client = self._client(context)
        for item in self._op.optouts.watch(client, request.since, context.is_active):
            if item is None:  # optout.BACKLOG_SENT: all on record when the call began is out
                yield operator_pb2.WatchOptOutsResponse(backlog_sent=True)
            else:
                yield operator_pb2.WatchOptOutsResponse(raw_uid=item[0], opted_out_at=item[1])

    def GetBidstreamKeys(
        self, request: operator_pb2.GetBidstreamKeysRequest, context: Any
    ) -> operator_pb2.GetBidstreamKeysResponse:
        client = self._client(context)
        published = self._op.keys.bidstream_keys(client)
        return operator_pb2.GetBidstreamKeysResponse(key_container=key_container_proto(published))

    def GetSharingKeys(
        self, request: operator_pb2.GetSharingKeysRequest, context: Any
    ) -> operator_pb2.GetSharingKeysResponse:
        client = self._client(context)
        published = self._op.keys.sharing_keys(client)
        return operator_pb2.GetSharingKeysResponse(key_container=key_container_proto(published))
