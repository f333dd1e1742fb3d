"""The publisher's client of the UID2 operator: deadlines, retries on UNAVAILABLE, one typed
error (PeerError). Sends only hashed DII."""

from __future__ import annotations

import grpc

from publisher_svc.model import (
    DiiKind,
    GenerateOutcome,
    GenerateResult,
    HashedDii,
    Identity,
    PeerError,
    PrivacySettings,
    RefreshOutcome,
    RefreshResult,
)
from svc_common.grpc_client import Backoff, RemoteError, bearer, call_with_retry
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

# Reconnect quickly once the operator is back (gRPC's default backoff grows to two minutes).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)

_UNAVAILABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

_GENERATE = {
    operator_pb2.GENERATE_TOKEN_STATUS_SUCCESS: GenerateOutcome.SUCCESS,
    operator_pb2.GENERATE_TOKEN_STATUS_OPTOUT: GenerateOutcome.OPTOUT,
    operator_pb2.GENERATE_TOKEN_STATUS_INSUFFICIENT_CONSENT: GenerateOutcome.INSUFFICIENT_CONSENT,
}
_REFRESH = {
    operator_pb2.REFRESH_TOKEN_STATUS_SUCCESS: RefreshOutcome.SUCCESS,
    operator_pb2.REFRESH_TOKEN_STATUS_OPTOUT: RefreshOutcome.OPTOUT,
    operator_pb2.REFRESH_TOKEN_STATUS_EXPIRED_TOKEN: RefreshOutcome.EXPIRED_TOKEN,
    operator_pb2.REFRESH_TOKEN_STATUS_INVALID_TOKEN: RefreshOutcome.INVALID_TOKEN,
}


def _identity(msg: operator_pb2.Identity) -> Identity:
    return Identity(
        advertising_token=msg.advertising_token,
        refresh_token=msg.refresh_token,
        identity_expires=msg.identity_expires,
        refresh_from=msg.refresh_from,
        refresh_expires=msg.refresh_expires,
        refresh_response_key=msg.refresh_response_key,
    )


def peer_error(peer: str, err: RemoteError) -> PeerError:
    return PeerError(peer, err.code.name, err.reason, unavailable=err.code in _UNAVAILABLE_CODES)


class OperatorClient:
    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        timeout_s: float = 2.0,
        attempts: int = 3,
        backoff: Backoff | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = operator_pb2_grpc.OperatorServiceStub(self._channel)
        self._metadata = bearer(api_key)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff = backoff or Backoff(base_s=0.05, cap_s=0.5)

    def close(self) -> None:
        self._channel.close()

    def generate(
        self, dii: HashedDii, privacy: PrivacySettings, on_behalf_of_site_id: int
    ) -> GenerateResult:
        msg = (
            operator_pb2.Dii(email_hash=dii.hash_b64)
            if dii.kind is DiiKind.EMAIL
            else operator_pb2.Dii(phone_hash=dii.hash_b64)
        )
        request = operator_pb2.GenerateTokenRequest(
            dii=msg,
            privacy_settings=operator_pb2.PrivacySettings(
                transparency_notice_accepted=privacy.transparency_notice_accepted,
                tcf_consent_string=privacy.tcf_consent_string,
            ),
            on_behalf_of_site_id=on_behalf_of_site_id,
        )
        try:
            response = call_with_retry(
                self._stub.GenerateToken,
                request,
                timeout_s=self._timeout_s,
                metadata=self._metadata,
                attempts=self._attempts,
                backoff=self._backoff,
            )
        except RemoteError as err:
            raise peer_error("operator", err) from None
        outcome = _GENERATE.get(response.status)
        if outcome is None:
            raise PeerError("operator", "UNKNOWN_STATUS", "", unavailable=False)
        if outcome is GenerateOutcome.SUCCESS:
            return GenerateResult(outcome, _identity(response.identity))
        return GenerateResult(outcome)

    def refresh(self, refresh_token: str) -> RefreshResult:
        request = operator_pb2.RefreshTokenRequest(refresh_token=refresh_token)
        try:
            response = call_with_retry(
                self._stub.RefreshToken,
                request,
                timeout_s=self._timeout_s,
                attempts=self._attempts,
                backoff=self._backoff,
            )
        except RemoteError as err:
            raise peer_error("operator", err) from None
        outcome = _REFRESH.get(response.status)
        if outcome is None:
            raise PeerError("operator", "UNKNOWN_STATUS", "", unavailable=False)
        if outcome is RefreshOutcome.SUCCESS:
            return RefreshResult(outcome, _identity(response.identity))
        return RefreshResult(outcome)
