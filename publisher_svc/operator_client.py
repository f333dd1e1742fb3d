"""The publisher's client of the UID2 operator: deadlines, retries on UNAVAILABLE, one typed
error (PeerError). Sends only hashed DII."""

from __future__ import annotations

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
from publisher_svc.peer import PeerClient
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

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


class OperatorClient(PeerClient):
    peer = "operator"
    stub_class = operator_pb2_grpc.OperatorServiceStub
    default_attempts = 3

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
        response = self._call(self._stub.GenerateToken, request)
        outcome = _GENERATE.get(response.status)
        if outcome is None:
            raise PeerError("operator", "UNKNOWN_STATUS", "", unavailable=False)
        if outcome is GenerateOutcome.SUCCESS:
            return GenerateResult(outcome, _identity(response.identity))
        return GenerateResult(outcome)

    def refresh(self, refresh_token: str) -> RefreshResult:
        request = operator_pb2.RefreshTokenRequest(refresh_token=refresh_token)
        # The refresh token is the credential: no API key travels with it.
        response = self._call(self._stub.RefreshToken, request, with_key=False)
        outcome = _REFRESH.get(response.status)
        if outcome is None:
            raise PeerError("operator", "UNKNOWN_STATUS", "", unavailable=False)
        if outcome is RefreshOutcome.SUCCESS:
            return RefreshResult(outcome, _identity(response.identity))
        return RefreshResult(outcome)
