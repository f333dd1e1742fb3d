"""The client-side identity: the `__uid_2` first-party cookie value, as the UID2 JS SDK keeps it
(`encodeURIComponent(JSON.stringify(identity))`, times in epoch milliseconds); `__euid` for an
EUID identity, as the EUID SDK keeps it."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from publisher_svc.model import Identity
from svc_common import json_text
from svc_common.errors import invalid_argument
from svc_common.impression_limits import MAX_TOKEN_CHARS

COOKIE_NAME = "__uid_2"
# An EUID identity's cookie, as the EUID JS SDK reads it.
EUID_COOKIE_NAME = "__euid"
# encodeURIComponent leaves these unescaped; quote() must do the same to match the SDK byte
# for byte.
_URI_COMPONENT_SAFE = "-_.!~*'()"
_MAX_COOKIE_CHARS = 4096
_STRING_FIELDS = ("advertising_token", "refresh_token", "refresh_response_key")
_TIME_FIELDS = ("identity_expires", "refresh_from", "refresh_expires")
# The times go back out in int64 proto fields (ClientCookie.expires) and the strings in proto
# string fields (UTF-8): a cookie that cannot is not an identity, not a server fault.
_MAX_INT64 = 2**63 - 1


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes can carry
        return False
    return True


def encode_cookie(identity: Identity) -> str:
    body = {
        "advertising_token": identity.advertising_token,
        "refresh_token": identity.refresh_token,
        "identity_expires": identity.identity_expires,
        "refresh_from": identity.refresh_from,
        "refresh_expires": identity.refresh_expires,
        "refresh_response_key": identity.refresh_response_key,
    }
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return urllib.parse.quote(text, safe=_URI_COMPONENT_SAFE)


def decode_cookie(value: str) -> Identity:
    """The identity in a cookie value; INVALID_ARGUMENT / INVALID_COOKIE when it is not one."""
    bad = invalid_argument("INVALID_COOKIE", "cookie value is not a UID2 identity")
    if not value or len(value) > _MAX_COOKIE_CHARS:
        raise bad
    try:
        body: Any = json_text.loads(urllib.parse.unquote(value, errors="strict"))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(body, dict):
        raise bad
    for name in _STRING_FIELDS:
        if not isinstance(body.get(name), str) or not body[name] or not _utf8(body[name]):
            raise bad
    # Tampered or corrupt: no operator issues a longer one, and the SSP would refuse the
    # impression that carried it.
    if len(body["advertising_token"]) > MAX_TOKEN_CHARS:
        raise bad
    for name in _TIME_FIELDS:
        v = body.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_INT64:
            raise bad
    return Identity(
        advertising_token=body["advertising_token"],
        refresh_token=body["refresh_token"],
        identity_expires=body["identity_expires"],
        refresh_from=body["refresh_from"],
        refresh_expires=body["refresh_expires"],
        refresh_response_key=body["refresh_response_key"],
    )
