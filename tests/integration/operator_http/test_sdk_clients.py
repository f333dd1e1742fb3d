"""uid2-client 2.9.0, unchanged, pointed at our operator's HTTP front door."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest
from uid2_client import (
    BidstreamClient,
    DecryptionStatus,
    EncryptionStatus,
    IdentityMapClient,
    IdentityMapInput,
    IdentityMapV3Client,
    IdentityMapV3Input,
    SharingClient,
    TokenGenerateInput,
    Uid2PublisherClient,
)
from uid2_client.unmapped_identity_reason import UnmappedIdentityReason

from tests.integration.operator_http.conftest import HttpLive
from uid2.operator.v1 import operator_pb2 as pb


def _pub(live: HttpLive, name: str = "all") -> Uid2PublisherClient:
    c = live.clients[name]
    return Uid2PublisherClient(live.base_url, c.api_key, c.secret)


def _b64_sha(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _grpc_raw_uid(live: HttpLive, dii: pb.Dii) -> str:
    resp = live.stub.MapIdentity(
        pb.MapIdentityRequest(dii=[dii]), metadata=live.grpc_md("all"), timeout=10
    )
    return str(resp.results[0].raw_uid)


def _decrypt(live: HttpLive, token: str) -> object:
    c = live.clients["all"]
    client = BidstreamClient(live.base_url, c.api_key, c.secret)
    assert client.refresh().success
    return client.decrypt_token_into_raw_uid(token, None)


@pytest.mark.parametrize(
    ("make", "dii"),
    [
        (
            lambda: TokenGenerateInput.from_email("Jane.Doe@Example.com"),
            pb.Dii(email="jane.doe@example.com"),
        ),
        (lambda: TokenGenerateInput.from_phone("+14155550100"), pb.Dii(phone="+14155550100")),
        (
            lambda: TokenGenerateInput.from_hashed_email(_b64_sha("hashed@example.com")),
            pb.Dii(email="hashed@example.com"),
        ),
        (
            lambda: TokenGenerateInput.from_hashed_phone(_b64_sha("+14155550101")),
            pb.Dii(phone="+14155550101"),
        ),
        (
            lambda: TokenGenerateInput.from_email("plain@example.com").do_not_hash(),
            pb.Dii(email="plain@example.com"),
        ),
    ],
)
def test_publisher_generates_for_email_phone_and_hashes(
    live: HttpLive, make: object, dii: pb.Dii
) -> None:
    response = _pub(live).generate_token(make())  # type: ignore[operator]  # make is a parametrized factory
    assert response.is_success()
    identity = response.get_identity()
    now_ms = dt.datetime.now(tz=dt.UTC).timestamp() * 1000
    assert now_ms < identity.get_refresh_from() <= identity.get_identity_expires()
    assert identity.get_identity_expires() <= identity.get_refresh_expires()
    assert len(identity.get_refresh_token()) == 388
    decrypted = _decrypt(live, identity.get_advertising_token())
    assert decrypted.status is DecryptionStatus.SUCCESS  # type: ignore[attr-defined]  # _decrypt returns the SDK's result as object
    assert decrypted.site_id == 100  # type: ignore[attr-defined]  # _decrypt returns the SDK's result as object
    # The same raw UID2 the gRPC front door maps the DII to: one domain behind both.
    assert decrypted.uid == _grpc_raw_uid(live, dii)  # type: ignore[attr-defined]  # _decrypt returns the SDK's result as object


def test_publisher_refresh_chain(live: HttpLive) -> None:
    client = _pub(live)
    identity = client.generate_token(
        TokenGenerateInput.from_email("chain@example.com")
    ).get_identity()
    first_uid = _decrypt(live, identity.get_advertising_token()).uid  # type: ignore[attr-defined]  # _decrypt returns the SDK's result as object
    for _ in range(3):
        refreshed = client.refresh_token(identity)
        assert refreshed.is_success()
        new = refreshed.get_identity()
        assert new.get_refresh_token() != identity.get_refresh_token()
        assert new.get_refresh_response_key() != identity.get_refresh_response_key()
        identity = new
    assert _decrypt(live, identity.get_advertising_token()).uid == first_uid  # type: ignore[attr-defined]  # _decrypt returns the SDK's result as object


@pytest.mark.parametrize(
    "make",
    [
        lambda: TokenGenerateInput.from_email("optout@example.com"),
        lambda: TokenGenerateInput.from_phone("+00000000000"),
    ],
)
def test_publisher_gets_optout_for_optout_test_identities(live: HttpLive, make: object) -> None:
    response = _pub(live).generate_token(make())  # type: ignore[operator]  # make is a parametrized factory
    assert response.is_optout()
    assert response.get_identity() is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: TokenGenerateInput.from_email("refresh-optout@example.com"),
        lambda: TokenGenerateInput.from_phone("+00000000002"),
    ],
)
def test_refresh_optout_test_identities(live: HttpLive, make: object) -> None:
    client = _pub(live)
    generated = client.generate_token(make())  # type: ignore[operator]  # make is a parametrized factory
    assert generated.is_success()
    refreshed = client.refresh_token(generated.get_identity())
    assert refreshed.is_optout()
    assert refreshed.get_identity() is None


def test_validate_identities_never_opt_out(live: HttpLive) -> None:
    status, answer = live.call("all", "/v2/token/logout", {"email": "validate@example.com"})
    assert (status, answer) == (200, {"status": "success", "body": {"optout": "OK"}})
    response = _pub(live).generate_token(TokenGenerateInput.from_email("validate@example.com"))
    assert response.is_success()
    assert _pub(live).refresh_token(response.get_identity()).is_success()


def test_identity_map_v2_batch_with_invalid_and_optout(live: HttpLive) -> None:
    c = live.clients["all"]
    client = IdentityMapClient(live.base_url, c.api_key, c.secret)
    emails = [f"user{i}@example.com" for i in range(200)] + ["optout@example.com"]
    result = client.generate_identity_map(IdentityMapInput.from_emails(emails))
    assert len(result.mapped_identities) == 200
    assert result.unmapped_identities["optout@example.com"].get_reason() == "optout"
    mapped = result.mapped_identities["user7@example.com"]
    assert mapped.get_raw_uid() == _grpc_raw_uid(live, pb.Dii(email="user7@example.com"))
    assert mapped.get_bucket_id()

    hashed = [_b64_sha("+14155550123"), "not-a-hash", _b64_sha("+00000000000")]
    result = client.generate_identity_map(IdentityMapInput.from_hashed_phones(hashed))
    assert list(result.mapped_identities) == [hashed[0]]
    assert result.unmapped_identities["not-a-hash"].get_reason() == "invalid identifier"
    assert result.unmapped_identities[hashed[2]].get_reason() == "optout"


def test_identity_map_v3_batch_with_invalid_and_optout(live: HttpLive) -> None:
    c = live.clients["all"]
    client = IdentityMapV3Client(live.base_url, c.api_key, c.secret)
    request = (
        IdentityMapV3Input.from_emails(["v3@example.com", "optout@example.com"])
        .with_phones(["+14155550199", "+00000000000"])
        .with_hashed_email("bad hash")
        .with_hashed_phone(_b64_sha("+14155550198"))
    )
    result = client.generate_identity_map(request)
    mapped = result.mapped_identities
    assert set(mapped) == {"v3@example.com", "+14155550199", _b64_sha("+14155550198")}
    one = mapped["v3@example.com"]
    assert one.current_raw_uid == _grpc_raw_uid(live, pb.Dii(email="v3@example.com"))
    assert one.previous_raw_uid is None
    assert one.refresh_from > dt.datetime.now(tz=dt.UTC) - dt.timedelta(days=1)
    unmapped = result.unmapped_identities
    assert unmapped["optout@example.com"].reason is UnmappedIdentityReason.OPTOUT
    assert unmapped["+00000000000"].reason is UnmappedIdentityReason.OPTOUT
    assert unmapped["bad hash"].reason is UnmappedIdentityReason.INVALID_IDENTIFIER


def test_bidstream_and_sharing_keys_over_http_decrypt_grpc_tokens(live: HttpLive) -> None:
    grpc_token = live.generate("grpc-issued@example.com").advertising_token
    raw = _grpc_raw_uid(live, pb.Dii(email="grpc-issued@example.com"))

    reader = live.clients["reader"]
    bidstream = BidstreamClient(live.base_url, reader.api_key, reader.secret)
    assert bidstream.refresh().success
    result = bidstream.decrypt_token_into_raw_uid(grpc_token, None)
    assert (result.status, result.uid, result.site_id) == (DecryptionStatus.SUCCESS, raw, 100)

    c = live.clients["all"]
    sharing = SharingClient(live.base_url, c.api_key, c.secret)
    assert sharing.refresh().success
    result = sharing.decrypt_token_into_raw_uid(grpc_token)
    assert (result.status, result.uid) == (DecryptionStatus.SUCCESS, raw)


def test_a_sharer_encrypts_only_under_its_own_keyset(live: HttpLive) -> None:
    # Another site's keys come without their keyset id, for decryption only: with it, the SDK
    # minted tokens under that site's keyset in the caller's name.
    c = live.clients["all"]  # site 100; ID_READER too, so it holds site 101's keys
    sharing = SharingClient(live.base_url, c.api_key, c.secret)
    assert sharing.refresh().success
    raw = base64.b64encode(hashlib.sha256(b"sharing-keysets").digest()).decode()
    assert sharing.encrypt_raw_uid_into_token(raw).status is EncryptionStatus.SUCCESS
    operator = live.served.operator
    assert operator is not None
    other = operator.state.keys.default_keyset[101]
    refused = sharing.encrypt_raw_uid_into_token(raw, keyset_id=other)
    assert refused.status is EncryptionStatus.NOT_AUTHORIZED_FOR_KEY
    site_101_token = live.generate("site-101@example.com", "gen").advertising_token
    result = sharing.decrypt_token_into_raw_uid(site_101_token)
    assert (result.status, result.site_id) == (DecryptionStatus.SUCCESS, 101)


def test_key_json_shape(live: HttpLive) -> None:
    status, answer = live.call("reader", "/v2/key/bidstream", b"")
    assert status == 200 and answer["status"] == "success"
    body = answer["body"]
    assert body["master_keyset_id"] == 9999999 and body["caller_site_id"] == 300
    assert all(isinstance(k["id"], int) and isinstance(k["expires"], int) for k in body["keys"])
    activates = [k["activates"] for k in body["keys"]]
    assert activates == sorted(activates)


def test_validate_token(live: HttpLive) -> None:
    identity = _pub(live).generate_token(TokenGenerateInput.from_email("val@example.com"))
    token = identity.get_identity().get_advertising_token()
    ok = live.call("all", "/v2/token/validate", {"token": token, "email": "val@example.com"})
    assert ok == (200, {"status": "success", "body": True})
    other = live.call("all", "/v2/token/validate", {"token": token, "email": "other@example.com"})
    assert other == (200, {"status": "success", "body": False})


def test_logout_opts_out_then_status_and_map_agree(live: HttpLive) -> None:
    email = "leaving@example.com"
    raw = _grpc_raw_uid(live, pb.Dii(email=email))
    status, answer = live.call("all", "/v2/optout/status", {"advertising_ids": [raw]})
    assert (status, answer) == (200, {"status": "success", "body": {"opted_out": []}})

    identity = _pub(live).generate_token(TokenGenerateInput.from_email(email)).get_identity()
    assert live.call("all", "/v2/token/logout", {"email_hash": _b64_sha(email)})[0] == 200

    # A malformed id in the batch is simply not opted out, as the official operator answers
    # (one bad row failed the whole call).
    ids = ["not-a-raw-uid", raw, "A" * 44]
    status, answer = live.call("all", "/v2/optout/status", {"advertising_ids": ids})
    assert status == 200
    [entry] = answer["body"]["opted_out"]
    assert entry["advertising_id"] == raw and isinstance(entry["opted_out_since"], int)
    assert _pub(live).generate_token(TokenGenerateInput.from_email(email)).is_optout()
    assert _pub(live).refresh_token(identity).is_optout()
    c = live.clients["all"]
    mapped = IdentityMapClient(live.base_url, c.api_key, c.secret).generate_identity_map(
        IdentityMapInput.from_emails([email])
    )
    assert mapped.unmapped_identities[email].get_reason() == "optout"


def test_insufficient_consent_is_a_200_status(live: HttpLive) -> None:
    # A TCF v2 core string whose purpose-1 consent bit is 0.
    no_purpose_1 = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"
    status, answer = live.call(
        "all",
        "/v2/token/generate",
        {"email": "tcf@example.com", "tcf_consent_string": no_purpose_1},
    )
    assert (status, answer) == (200, {"status": "insufficient_user_consent"})


def test_generate_accepts_legacy_policy_fields(live: HttpLive) -> None:
    status, answer = live.call(
        "all", "/v2/token/generate", {"email": "p@example.com", "optout_check": 1, "policy": 1}
    )
    assert status == 200 and answer["status"] == "success"


def test_refresh_cors_and_healthcheck(live: HttpLive) -> None:
    pre = live.raw(
        "/v2/token/refresh",
        method="OPTIONS",
        headers={"Origin": "https://pub.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    bad = live.raw("/v2/token/refresh", b"garbage", headers={"Origin": "https://pub.example"})
    assert bad.status == 400 and bad.headers["access-control-allow-origin"] == "*"
    health = live.raw("/ops/healthcheck", method="GET")
    assert (health.status, health.body) == (200, b"OK")
