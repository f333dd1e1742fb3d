"""Privacy settings: whether a user's consent allows a token (the consent rule), and the privacy
bits carried in tokens.

Rule: a token only when the transparency notice was accepted AND (no TCF string was collected,
or the TCF v2 core string grants consent to purpose 1, "store and/or access information on a
device"). A TCF string that does not decode is INVALID_ARGUMENT (INVALID_TCF_CONSENT_STRING)."""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from svc_common.errors import invalid_argument
from uid2_crypto.tokens import PRIVACY_BIT_CLIENT_SIDE_GENERATED

# Bit 0 ("legacy") is always set, as the official operator does for server-side tokens.
PRIVACY_BITS_DEFAULT = 1
# Client-side generated: bit 1 (value 2), where the reference, the official operator and the
# Java and C# SDKs put it, and bit 30, where uid2-client 2.9.0 and the reference's vectors read
# it (README, "One place where the ground truth disagrees"). With both, every SDK and our own
# decryptor see the token as client-side generated and apply the domain / app-name check.
PRIVACY_BITS_CLIENT_SIDE = PRIVACY_BITS_DEFAULT | (1 << 1) | PRIVACY_BIT_CLIENT_SIDE_GENERATED
_MAX_TCF_LEN = 8192
# Offsets (bits) in the TCF v2 core string: Version(6) Created(36) LastUpdated(36) CmpId(12)
# CmpVersion(12) ConsentScreen(6) ConsentLanguage(12) VendorListVersion(12)
# TcfPolicyVersion(6) IsServiceSpecific(1) UseNonStandardTexts(1) SpecialFeatureOptIns(12)
# PurposesConsent(24) ...
_PURPOSES_CONSENT_AT = 152
_CORE_MIN_BITS = _PURPOSES_CONSENT_AT + 24


@dataclass(frozen=True)
class Privacy:
    transparency_notice_accepted: bool = False
    tcf_consent_string: str = ""


def _b64url_decode(segment: str) -> bytes:
    if not segment or len(segment) > _MAX_TCF_LEN:
        raise ValueError("empty or too long")
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return binascii.a2b_base64(padded.replace("-", "+").replace("_", "/"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ValueError("not base64url") from exc


def tcf_grants_purpose_1(tcf: str) -> bool:
    """Decodes the core segment of a TCF v2 string; raises ServiceError when undecodable."""
    core = tcf.split(".", 1)[0]
    try:
        data = _b64url_decode(core)
    except ValueError:
        raise invalid_argument(
            "INVALID_TCF_CONSENT_STRING", "the TCF consent string is not valid base64url"
        ) from None
    if len(data) * 8 < _CORE_MIN_BITS or (data[0] >> 2) != 2:
        raise invalid_argument(
            "INVALID_TCF_CONSENT_STRING", "the TCF consent string is not a TCF v2 core string"
        )
    byte, bit = divmod(_PURPOSES_CONSENT_AT, 8)
    return bool((data[byte] >> (7 - bit)) & 1)


def consent_allows_token(privacy: Privacy) -> bool:
    """True when a token may be issued. The TCF string is checked even when the notice was
    refused, so a malformed string is always reported."""
    tcf_ok = True
    if privacy.tcf_consent_string:
        tcf_ok = tcf_grants_purpose_1(privacy.tcf_consent_string)
    return privacy.transparency_notice_accepted and tcf_ok
