import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.crypto.vectors import VECTORS
from uid2_crypto.errors import InvalidIdentifierError
from uid2_crypto.identity import (
    MAX_DII_CHARS,
    IdentityType,
    identity_hash,
    normalize_email,
    normalize_phone,
    parse_hash,
    sha256_b64,
)

# Reference §2's table.
EMAIL_TABLE = [
    ("USER@example.com", "user@example.com", "tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ="),
    ("MyEmail@example.com", "myemail@example.com", "FsGNM28LJQ8OLZB0Us65ZYp07NrovJSGTCMSKnLMJ6U="),
    (
        "My.Email@example.com",
        "my.email@example.com",
        "4itTvG+HEnTzpiqzejyu1yFPwU1nYhWpaiQvz62hyB8=",
    ),
    (
        "JaneSaoirse+Work@example.com",
        "janesaoirse+work@example.com",
        "KKruSBUjDNO069iMUVImVQZm6RrAGZKeOtrD9mwogYA=",
    ),
    (
        "JANE.SAOIRSE@gmail.com",
        "janesaoirse@gmail.com",
        "ku4mBX7Z3qJTXWyLFB1INzkyR2WZGW4ANSJUiW21iI8=",
    ),
    (
        "JaneSaoirse+Work@gmail.com",
        "janesaoirse@gmail.com",
        "ku4mBX7Z3qJTXWyLFB1INzkyR2WZGW4ANSJUiW21iI8=",
    ),
    (
        "TEst.TEst+123@GMail.Com",
        "testtest@gmail.com",
        "LkLfFrut8Tc3h/fIvYDiBKSbaMiau/DtaLBPQYszdMw=",
    ),
    ("test+test@test.com", "test+test@test.com", "rQ4yzdOz4uG8N54326QyZD6/JwqrXn4lmy34cVCojB8="),
    ("+test@test.com", "+test@test.com", "weFizOVVWKlLfyorbBU8oxYDv4HJtTZCPMyZ4THzUQE="),
    ("testtest@😊test.com", "testtest@😊test.com", "tcng5pttf7Y2z4ylZTROvIMw1+IVrMpR4D1KeXSrdiM="),
]
PHONE_HASH = ("+12345678901", "EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4=")
INVALID_EMAILS = ["", "@", "a@", "@b.com", "+", " ", "+@gmail.com", ".+@gmail.com", "a@ba@z.com"]
INVALID_PHONES = [
    "+123456789",
    "+1234567890123456",
    "+1234567890A",
    "+1234567890 ",
    "555-555-5555",
    "1234567890",
    "",
    "+",
    "+" + "\uff11" * 11,  # full-width digits are digits to str.isdigit, not to E.164
]


@pytest.mark.parametrize(("raw", "normalised", "digest"), EMAIL_TABLE)
def test_reference_email_table(raw: str, normalised: str, digest: str) -> None:
    assert normalize_email(raw) == normalised
    assert sha256_b64(normalised) == digest
    assert identity_hash("email", raw) == (
        IdentityType.EMAIL,
        parse_hash(digest, IdentityType.EMAIL),
    )


@pytest.mark.parametrize("raw", sorted(VECTORS["hashing"]))
def test_vector_hashing(raw: str) -> None:
    want = VECTORS["hashing"][raw]
    if raw.startswith("+"):
        assert normalize_phone(raw) == want["normalized"]
        kind = "phone"
    else:
        assert normalize_email(raw) == want["normalized"]
        kind = "email"
    assert sha256_b64(want["normalized"]) == want["hash"]
    _, digest = identity_hash(kind, raw)
    assert digest == hashlib.sha256(want["normalized"].encode()).digest()


def test_phone_hash() -> None:
    phone, digest = PHONE_HASH
    assert normalize_phone(phone) == phone
    assert sha256_b64(phone) == digest
    assert identity_hash("phone", phone)[0] is IdentityType.PHONE
    assert identity_hash("phone_hash", digest) == identity_hash("phone", phone)


@pytest.mark.parametrize("raw", INVALID_EMAILS)
def test_invalid_emails(raw: str) -> None:
    with pytest.raises(InvalidIdentifierError) as err:
        normalize_email(raw)
    assert err.value.reason == "INVALID_EMAIL"


@pytest.mark.parametrize("raw", INVALID_PHONES)
def test_invalid_phones(raw: str) -> None:
    with pytest.raises(InvalidIdentifierError) as err:
        normalize_phone(raw)
    assert err.value.reason == "INVALID_PHONE"


def test_phone_length_bounds() -> None:
    assert normalize_phone("+" + "1" * 10)
    assert normalize_phone("+" + "1" * 15)


def test_spaces() -> None:
    assert normalize_email("  Jo Hn@Example.COM  ") == "john@example.com"
    # googlemail keeps dots and tags: only the exact domain gmail.com is special.
    assert normalize_email("a.b+c@googlemail.com") == "a.b+c@googlemail.com"


def test_error_messages_never_hold_the_input() -> None:
    secret = "very.secret.person@@example.com"
    with pytest.raises(InvalidIdentifierError) as err:
        normalize_email(secret)
    assert "secret" not in str(err.value)
    assert "secret" not in repr(err.value)


def test_parse_hash_forms() -> None:
    digest = hashlib.sha256(b"x").digest()
    import base64

    b64 = base64.b64encode(digest).decode()
    assert parse_hash(b64, IdentityType.EMAIL) == digest
    assert parse_hash(digest.hex(), IdentityType.EMAIL) == digest
    assert parse_hash(digest.hex().upper(), IdentityType.PHONE) == digest
    assert identity_hash("email_hash", digest.hex()) == (IdentityType.EMAIL, digest)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "A" * 42 + "B=",  # not canonical: stray low bits
        "A" * 44,  # 33 bytes
        "z" * 64,
        "0" * 63 + " ",
        "é" * 44,
        "0" * 62,
        "tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf_F5HVRQ=",  # url-safe alphabet
    ],
)
def test_parse_hash_rejects(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError) as err:
        parse_hash(bad, IdentityType.EMAIL)
    assert err.value.reason == "INVALID_EMAIL_HASH"
    with pytest.raises(InvalidIdentifierError) as err:
        parse_hash(bad, IdentityType.PHONE)
    assert err.value.reason == "INVALID_PHONE_HASH"


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown identity kind"):
        identity_hash("ssn", "1")


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_email_normalises_or_raises_and_is_idempotent(s: str) -> None:
    try:
        n = normalize_email(s)
    except InvalidIdentifierError as exc:
        assert exc.reason == "INVALID_EMAIL"
        return
    assert normalize_email(n) == n
    sha256_b64(n)  # always hashable


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9. +]{1,12}@[A-Za-z0-9.]{1,12}", fullmatch=True))
def test_email_like_inputs_idempotent(s: str) -> None:
    try:
        n = normalize_email(s)
    except InvalidIdentifierError:
        return
    assert normalize_email(n) == n
    assert n == n.strip(" ") and "@" in n


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_phone_normalises_or_raises(s: str) -> None:
    try:
        assert normalize_phone(s) == s
    except InvalidIdentifierError as exc:
        assert exc.reason == "INVALID_PHONE"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(["email", "phone", "email_hash", "phone_hash"]))
def test_identity_hash_only_raises_invalid_identifier(s: str, kind: str) -> None:
    try:
        _, digest = identity_hash(kind, s)
    except InvalidIdentifierError:
        return
    assert len(digest) == 32


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("email", "INVALID_EMAIL"), ("phone", "INVALID_PHONE"),
     ("email_hash", "INVALID_EMAIL_HASH"), ("phone_hash", "INVALID_PHONE_HASH")],
)  # fmt: skip
def test_identity_hash_refuses_input_over_the_dii_limit(kind: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifierError) as exc:
        identity_hash(kind, "a" * (MAX_DII_CHARS - 12) + "@example.com" + "x")
    assert exc.value.reason == reason
    assert identity_hash("email", "a" * (MAX_DII_CHARS - 12) + "@example.com")[0] == (
        IdentityType.EMAIL
    )


def test_only_ascii_letters_are_lowercased() -> None:
    # Reference §2: lowercase ASCII A-Z only; other characters stay as they are.
    assert normalize_email("ÀBÇ@ÉXAMPLE.com") == "ÀbÇ@Éxample.com"


def test_leading_spaces_of_the_domain_are_kept() -> None:
    # As the Operator does: spaces are dropped in the local part, only trailing ones after "@".
    assert normalize_email("a@ example.com") == "a@ example.com"
    assert normalize_email("a @ example.com ") == "a@ example.com"


def test_gmail_rules_need_the_exact_domain() -> None:
    # Only gmail.com: a domain that merely ends with it keeps its dots and +tag.
    assert normalize_email("j.doe+x@notgmail.com") == "j.doe+x@notgmail.com"
    assert normalize_email("j.doe+x@mail.gmail.com") == "j.doe+x@mail.gmail.com"
    assert normalize_email("j.doe+x@gmail.com") == "jdoe@gmail.com"
