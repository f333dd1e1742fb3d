"""The `__uid_2` cookie value: the identity JSON, URL-encoded as encodeURIComponent does."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse

import pytest

from publisher_svc.cookie import COOKIE_NAME, decode_cookie, encode_cookie
from publisher_svc.inputs import cookie_for
from publisher_svc.model import Identity
from svc_common.errors import ServiceError
from svc_common.impression_limits import MAX_TOKEN_CHARS

IDENT = Identity(
    advertising_token="A4AAAAB-_xyz+/=",
    refresh_token="AAAAAQ+/abc=",
    identity_expires=1_700_000_259_200_000,
    refresh_from=1_700_000_003_600_000,
    refresh_expires=1_700_002_592_000_000,
    refresh_response_key="cmVzcG9uc2Uga2V5IDMyIGJ5dGVzIGxvbmcgISEhISE=",
)


def _body() -> dict[str, object]:
    return dict(json.loads(urllib.parse.unquote(encode_cookie(IDENT))))


def test_cookie_name() -> None:
    assert COOKIE_NAME == "__uid_2"
    assert cookie_for(IDENT).name == "__uid_2"
    # EUID review: an EUID identity went out as __uid_2, which the EUID JS SDK does not read.
    euid = dataclasses.replace(IDENT, advertising_token="E4AAAAB-_xyz+/=")
    assert cookie_for(euid).name == "__euid"
    assert decode_cookie(cookie_for(euid).value) == euid


def test_round_trip() -> None:
    assert decode_cookie(encode_cookie(IDENT)) == IDENT


def test_shape_is_the_js_sdk_identity_json() -> None:
    value = encode_cookie(IDENT)
    body = json.loads(urllib.parse.unquote(value))
    assert body == {
        "advertising_token": IDENT.advertising_token,
        "refresh_token": IDENT.refresh_token,
        "identity_expires": IDENT.identity_expires,
        "refresh_from": IDENT.refresh_from,
        "refresh_expires": IDENT.refresh_expires,
        "refresh_response_key": IDENT.refresh_response_key,
    }
    # encodeURIComponent: no raw JSON / cookie-breaking characters remain
    for ch in '{}":,;= +/':
        assert ch not in value
    assert value.startswith("%7B%22advertising_token%22%3A%22A4AAAAB-_xyz%2B%2F%3D%22")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not json",
        "%7B%7D",  # {}
        urllib.parse.quote('["a"]'),
        urllib.parse.quote('{"advertising_token":"a","refresh_token":"b"}'),
        urllib.parse.quote(json.dumps({**_body(), "refresh_from": "1"})),
        "%FF%FE",
        "x" * 5000,
        # times past int64 (ClientCookie.expires) and lone surrogates (not UTF-8): both once
        # reached the response or a peer's request and came out as INTERNAL
        urllib.parse.quote(json.dumps({**_body(), "refresh_expires": 2**63})),
        # JSON true is a Python int (a bool), not a time
        urllib.parse.quote(json.dumps({**_body(), "identity_expires": True})),
        urllib.parse.quote(json.dumps({**_body(), "advertising_token": "\ud800"})),
        urllib.parse.quote(json.dumps({**_body(), "refresh_token": "\udfff"})),
        # nested past the JSON parser's recursion limit, well under the size limit: was
        # RecursionError, INTERNAL to whoever sent it
        "[" * 2000 + "]" * 2000,
    ],
)
def test_bad_cookie_is_invalid_argument(value: str) -> None:
    with pytest.raises(ServiceError) as exc:
        decode_cookie(value)
    assert exc.value.reason == "INVALID_COOKIE"
    assert value[:20] not in exc.value.message or not value


def test_an_advertising_token_over_the_reference_limit_is_not_an_identity() -> None:
    body = _body()
    body["advertising_token"] = "A4" + "x" * 498  # 500: the limit
    ok = urllib.parse.quote(json.dumps(body))
    assert len(decode_cookie(ok).advertising_token) == MAX_TOKEN_CHARS
    body["advertising_token"] = "A4" + "x" * 499  # 501: one over
    with pytest.raises(ServiceError) as exc:
        decode_cookie(urllib.parse.quote(json.dumps(body)))
    assert exc.value.reason == "INVALID_COOKIE"
    body["advertising_token"] = "A4" + "x" * 900  # 902, as an audit saw
    with pytest.raises(ServiceError) as exc:
        decode_cookie(urllib.parse.quote(json.dumps(body)))
    assert exc.value.reason == "INVALID_COOKIE"


def test_encoding_leaves_what_encode_uri_component_leaves() -> None:
    # encodeURIComponent keeps A-Z a-z 0-9 - _ . ! ~ * ' ( ) and escapes everything else.
    odd = dataclasses.replace(IDENT, refresh_response_key="k!~*'()-_.;")
    value = encode_cookie(odd)
    assert "%22k!~*'()-_.%3B%22" in value
    assert decode_cookie(value) == odd
