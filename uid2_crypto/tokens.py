"""Advertising tokens: v4/v3 encoding and a v2/v3/v4 decoder (reference §4 and §6).

Layout (integers big-endian, times epoch ms)::

    prefix(1) = scope<<4 | type<<2 | 3    version(1) = 128 (v4) / 112 (v3)    master key id(4)
    AES-256-GCM(master): nonce(12) ‖ ct ‖ tag(16) of
        expires(8) ‖ created(8) ‖ operator site(4) ‖ operator type(1) ‖ operator version(4)
        ‖ operator key id(4) ‖ site key id(4) ‖
        AES-256-GCM(site): nonce(12) ‖ ct ‖ tag(16) of
            site id(4) ‖ publisher id(8) ‖ client key id(4) ‖ privacy bits(4)
            ‖ established(8) ‖ refreshed(8) ‖ raw UID2 (32 or 33)

v4 is base64url without padding, v3 standard base64. v2 is decode-only (AES-CBC).

The decoder answers with a status for every input: nothing it is given can make it raise.
"""

from __future__ import annotations

import base64
import binascii
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from uid2_crypto.identity import IdentityScope, IdentityType
from uid2_crypto.keys import Key, KeyContainer, KeyRing

V2 = "V2"
V3 = "V3"
V4 = "V4"
VERSION_BYTE_V3 = 112
VERSION_BYTE_V4 = 128
OPERATOR_TYPE_SERVICE = 1
# The client-side-generated flag sits where the official SDK reads it: uid2-client 2.9.0 walks
# the big-endian privacy field MSB-first, so its "bit 1" is bit 30 of the integer. The reference's
# vectors pin that reading (privacy bits 3 decrypt as not client-side generated), so
# is_client_side_generated agrees with the SDK's. The domain / app-name check runs on the same
# bit; uid2-client 2.9.0 itself checks no domain at all (its check is a TODO returning True).
PRIVACY_BIT_CLIENT_SIDE_GENERATED = 1 << 30
# Used when a key container states no maximum lifetime (the SDK does the same).
UNLIMITED_LIFETIME_S = sys.maxsize

_MASTER = struct.Struct(
    ">QQIBIII"
)  # expires, created, op site, op type, op version, op key, site key
_SITE = struct.Struct(">IQIIQQ")  # site, publisher, client key, privacy, established, refreshed
_HEADER = struct.Struct(">BBI")
_V2_MASTER = struct.Struct(">QI")  # expires, site key id
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">Q")
_NONCE = 12
_TAG = 16
_HEADER_LEN = 6
# Header, two nonces and two tags, the fixed fields and a raw UID2 of at least 32 bytes.
_MIN_V3_LEN = _HEADER_LEN + 2 * (_NONCE + _TAG) + _MASTER.size + _SITE.size + 32
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"", b"==", b"=")


class DecryptionStatus(Enum):
    SUCCESS = "success"
    NOT_INITIALIZED = "keys not initialized"
    KEYS_NOT_SYNCED = "no keys available or all keys have expired"
    INVALID_PAYLOAD = "invalid payload"
    VERSION_NOT_SUPPORTED = "token version not supported"
    NOT_AUTHORIZED_FOR_MASTER_KEY = "not authorized for master key"
    NOT_AUTHORIZED_FOR_KEY = "not authorized for key"
    EXPIRED_TOKEN = "token expired"  # noqa: S105 (a status, not a secret)
    INVALID_TOKEN_LIFETIME = "invalid token lifetime"  # noqa: S105  # a status name, no password
    DOMAIN_OR_APP_NAME_CHECK_FAILED = "domain or app name check failed"


class ClientType(Enum):
    BIDSTREAM = 1
    SHARING = 2


@dataclass(frozen=True)
class TokenPayload:
    # Kept out of repr so a logged payload never carries the identifier.
    raw_uid: bytes = field(repr=False)
    identity_type: IdentityType
    identity_scope: IdentityScope
    site_id: int
    publisher_id: int
    client_key_id: int
    privacy_bits: int
    established_ms: int
    refreshed_ms: int
    created_ms: int
    expires_ms: int
    operator_site_id: int = 0
    operator_version: int = 0
    operator_key_id: int = 0


@dataclass(frozen=True, slots=True)
class DecryptResult:
    status: DecryptionStatus
    # Kept out of repr: a decrypted result is what a bid path is most tempted to log.
    raw_uid: str | None = field(default=None, repr=False)
    site_id: int | None = None
    site_key_site_id: int | None = None
    identity_type: IdentityType | None = None
    identity_scope: IdentityScope | None = None
    established_ms: int | None = None
    expires_ms: int | None = None
    created_ms: int | None = None
    version: str | None = None
    is_client_side_generated: bool = False
    privacy_bits: int | None = None
    # NOT_AUTHORIZED_FOR_MASTER_KEY / NOT_AUTHORIZED_FOR_KEY: the id of the key the token names
    # that the decoder lacks (a decryptor decides from it whether a new key is plausible).
    missing_key_id: int | None = None

    @property
    def success(self) -> bool:
        return self.status is DecryptionStatus.SUCCESS


def _prefix(scope: IdentityScope, identity_type: IdentityType) -> int:
    return (int(scope) << 4) | (int(identity_type) << 2) | 3


def _encode_v3_bytes(
    payload: TokenPayload, master_key: Key, site_key: Key, version: int, rng: Callable[[int], bytes]
) -> bytes:
    if len(payload.raw_uid) not in (32, 33):
        raise ValueError("raw UID2 must be 32 or 33 bytes")
    # Drawn outer first: with the vectors' fixed nonces this reproduces their bytes exactly.
    outer_nonce = rng(_NONCE)
    inner_nonce = rng(_NONCE)
    if len(outer_nonce) != _NONCE or len(inner_nonce) != _NONCE:
        raise ValueError("rng returned the wrong number of bytes")
    site_plain = (
        _SITE.pack(
            payload.site_id,
            payload.publisher_id,
            payload.client_key_id,
            payload.privacy_bits,
            payload.established_ms,
            payload.refreshed_ms,
        )
        + payload.raw_uid
    )
    master_plain = (
        _MASTER.pack(
            payload.expires_ms,
            payload.created_ms,
            payload.operator_site_id,
            OPERATOR_TYPE_SERVICE,
            payload.operator_version,
            payload.operator_key_id,
            site_key.id,
        )
        + inner_nonce
        + site_key.aead.encrypt(inner_nonce, site_plain, None)
    )
    return (
        _HEADER.pack(_prefix(payload.identity_scope, payload.identity_type), version, master_key.id)
        + outer_nonce
        + master_key.aead.encrypt(outer_nonce, master_plain, None)
    )


def encode_advertising_token_v4(
    payload: TokenPayload,
    master_key: Key,
    site_key: Key,
    rng: Callable[[int], bytes],
) -> str:
    """The token the Operator issues: base64url without padding."""
    raw = _encode_v3_bytes(payload, master_key, site_key, VERSION_BYTE_V4, rng)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def encode_advertising_token_v3(
    payload: TokenPayload,
    master_key: Key,
    site_key: Key,
    rng: Callable[[int], bytes],
) -> str:
    """Same bytes as v4 with version 112, in standard base64."""
    raw = _encode_v3_bytes(payload, master_key, site_key, VERSION_BYTE_V3, rng)
    return base64.b64encode(raw).decode("ascii")


def _cbc_encrypt(key: Key, iv: bytes, plain: bytes) -> bytes:
    pad = 16 - len(plain) % 16
    enc = Cipher(algorithms.AES(key.secret), modes.CBC(iv)).encryptor()
    return enc.update(plain + bytes((pad,)) * pad) + enc.finalize()


def encode_advertising_token_v2(
    raw_uid_b64: str,
    site_id: int,
    master_key: Key,
    site_key: Key,
    *,
    expires_ms: int,
    established_ms: int,
    privacy_bits: int = 0,
    rng: Callable[[int], bytes],
) -> str:
    """Legacy v2 token, for testing decoders only; IVs are drawn outer first, as in the vectors."""
    outer_iv = rng(16)
    inner_iv = rng(16)
    if len(outer_iv) != 16 or len(inner_iv) != 16:
        raise ValueError("rng returned the wrong number of bytes")
    uid = raw_uid_b64.encode("ascii")
    identity = (
        struct.pack(">II", site_id, len(uid))
        + uid
        + struct.pack(">IQ", privacy_bits, established_ms)
    )
    master_plain = (
        _V2_MASTER.pack(expires_ms, site_key.id)
        + inner_iv
        + _cbc_encrypt(site_key, inner_iv, identity)
    )
    raw = (
        b"\x02"
        + _U32.pack(master_key.id)
        + outer_iv
        + _cbc_encrypt(master_key, outer_iv, master_plain)
    )
    return base64.b64encode(raw).decode("ascii")


def _cbc_decrypt(key: Key, iv: bytes, data: bytes) -> bytes | None:
    """AES-CBC with PKCS#7 checked in full; None for any malformed input."""
    if len(iv) != 16 or not data or len(data) % 16:
        return None
    dec = Cipher(algorithms.AES(key.secret), modes.CBC(iv)).decryptor()
    plain = dec.update(data) + dec.finalize()
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes((pad,)) * pad:
        return None
    return plain[:-pad]


def _decode_b64_any(token: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not; None when it is not base64 at all."""
    try:
        data = token.encode("ascii").translate(_URL_TO_STD)
        rem = len(data) & 3
        if rem == 1:
            return None
        if rem:
            data += _PAD[rem]
        return binascii.a2b_base64(data, strict_mode=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError are both ValueErrors
        return None


def claimed_scope(token: str) -> IdentityScope:
    """The identity scope a v3 or v4 token's prefix byte claims (unauthenticated: for labelling,
    as a bid request's eid source, never for trust). UID2 for a v2 token, which carries none,
    and for anything that is not a token's head."""
    head = _decode_b64_any(token[:4])
    if head is None or len(head) < 2 or head[1] not in (VERSION_BYTE_V3, VERSION_BYTE_V4):
        return IdentityScope.UID2
    return _SCOPES[(head[0] >> 4) & 1]  # the bit decryption reads (_decrypt_v3)


_NOT_INITIALIZED = DecryptResult(DecryptionStatus.NOT_INITIALIZED)
_KEYS_NOT_SYNCED = DecryptResult(DecryptionStatus.KEYS_NOT_SYNCED)
_INVALID_PAYLOAD = DecryptResult(DecryptionStatus.INVALID_PAYLOAD)
_VERSION_NOT_SUPPORTED = DecryptResult(DecryptionStatus.VERSION_NOT_SUPPORTED)
_NOT_AUTHORIZED_FOR_MASTER_KEY = DecryptionStatus.NOT_AUTHORIZED_FOR_MASTER_KEY
_EMPTY_SITE_DATA: Mapping[int, tuple[Sequence[str], Sequence[str]]] = MappingProxyType({})

_SUCCESS = DecryptionStatus.SUCCESS
_EXPIRED = DecryptionStatus.EXPIRED_TOKEN
_NOT_AUTHORIZED_FOR_KEY = DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
_BAD_LIFETIME = DecryptionStatus.INVALID_TOKEN_LIFETIME
_BAD_DOMAIN = DecryptionStatus.DOMAIN_OR_APP_NAME_CHECK_FAILED
_BIDSTREAM = ClientType.BIDSTREAM
_TYPES = (IdentityType.EMAIL, IdentityType.PHONE)
_SCOPES = (IdentityScope.UID2, IdentityScope.EUID)
_b64encode = base64.b64encode


def _name_listed(
    name: str | None, names: frozenset[str] | None, parents: frozenset[str] | None
) -> bool:
    """`name` is one of the site's `names`, or has a parent domain (down to two labels) among
    `parents`, the site's domains, when a page host's parents count."""
    if name is None or names is None:
        return False
    name = name.lower()
    if name in names:
        return True
    if not parents:
        return False
    labels = name.split(".")
    return any(".".join(labels[i:]) in parents for i in range(1, len(labels) - 1))


class TokenDecoder:
    """Decrypts advertising tokens with a fixed key ring; immutable, safe to share."""

    __slots__ = (
        "_allowed_names",
        "_identity_scope",
        "_keys",
        "_latest_expires_ms",
        "_max_bidstream_ms",
        "_max_sharing_ms",
        "_site_domains",
        "_skew_ms",
        "caller_site_id",
    )

    def __init__(
        self,
        keyring: KeyRing | None,
        *,
        caller_site_id: int = 0,
        site_data: Mapping[int, tuple[Sequence[str], Sequence[str]]] = _EMPTY_SITE_DATA,
        allow_clock_skew_s: int = 1800,
        max_bidstream_lifetime_s: int | None,
        max_sharing_lifetime_s: int | None,
        identity_scope: IdentityScope = IdentityScope.UID2,
        authorized_key_ids: frozenset[int] | None = None,
    ) -> None:
        self.caller_site_id = caller_site_id
        self._identity_scope = identity_scope
        self._skew_ms = allow_clock_skew_s * 1000
        self._max_bidstream_ms = (
            UNLIMITED_LIFETIME_S if max_bidstream_lifetime_s is None else max_bidstream_lifetime_s
        ) * 1000
        self._max_sharing_ms = (
            UNLIMITED_LIFETIME_S if max_sharing_lifetime_s is None else max_sharing_lifetime_s
        ) * 1000
        self._allowed_names: dict[int, frozenset[str]] = {
            site: frozenset(n.lower() for n in (*domains, *apps))
            for site, (domains, apps) in site_data.items()
        }
        # Domains alone: a page host's parent is matched against these, never an app id.
        self._site_domains: dict[int, frozenset[str]] = {
            site: frozenset(d.lower() for d in domains) for site, (domains, _) in site_data.items()
        }
        if keyring is None:
            self._keys: dict[int, Key] | None = None
            self._latest_expires_ms = 0
        else:
            self._keys = {
                k.id: k
                for k in keyring.keys
                if authorized_key_ids is None or k.id in authorized_key_ids
            }
            latest = max((k.expires for k in self._keys.values()), default=None)
            # Keys are valid while any of them expires after now (the SDK's rule).
            self._latest_expires_ms = -1 if latest is None else latest * 1000

    @classmethod
    def from_container(cls, c: KeyContainer) -> TokenDecoder:
        return cls(
            c.keyring,
            caller_site_id=c.caller_site_id or 0,
            site_data=c.site_data,
            allow_clock_skew_s=c.allow_clock_skew_seconds,
            max_bidstream_lifetime_s=c.max_bidstream_lifetime_seconds,
            max_sharing_lifetime_s=c.max_sharing_lifetime_seconds,
            identity_scope=c.identity_scope,
        )

    def decrypt(
        self,
        token: str,
        now_ms: int,
        *,
        domain_or_app: str | None = None,
        client_type: ClientType = _BIDSTREAM,
        subdomains: bool = False,
    ) -> DecryptResult:
        """`domain_or_app`: where a client-side generated token is used; the site must list it
        (the reference's check, exact). `subdomains`: `domain_or_app` is a page's host, which
        also passes when the site lists a parent domain of it (news.example.com for
        www.news.example.com), down to two labels."""
        keys = self._keys
        if keys is None:
            return _NOT_INITIALIZED
        if self._latest_expires_ms <= now_ms:
            return _KEYS_NOT_SYNCED
        try:
            if len(token) < 4:
                return _INVALID_PAYLOAD
            data = _decode_b64_any(token)
            if data is None:
                return self._undecodable(token)
            if len(data) < 2:
                return _INVALID_PAYLOAD
            if data[0] == 2:
                return self._decrypt_v2(data, keys, now_ms, client_type)
            version = data[1]
            if version == VERSION_BYTE_V4:
                label = V4
            elif version == VERSION_BYTE_V3:
                label = V3
            else:
                return _VERSION_NOT_SUPPORTED
            return self._decrypt_v3(
                data, label, keys, now_ms, domain_or_app, client_type, subdomains
            )
        except Exception:
            # Belt and braces: a decoder in the bid path must answer, never raise.
            return _INVALID_PAYLOAD

    def _undecodable(self, token: str) -> DecryptResult:
        # Like the SDK, judge the version from the first four characters alone.
        head = _decode_b64_any(token[:4])
        if (
            head is not None
            and len(head) >= 2
            and head[0] != 2
            and head[1]
            not in (
                VERSION_BYTE_V3,
                VERSION_BYTE_V4,
            )
        ):
            return _VERSION_NOT_SUPPORTED
        return _INVALID_PAYLOAD

    def _lifetime_ok(
        self, client_type: ClientType, created_ms: int, expires_ms: int, now_ms: int
    ) -> bool:
        max_ms = self._max_bidstream_ms if client_type is _BIDSTREAM else self._max_sharing_ms
        if expires_ms - created_ms > max_ms:
            return False
        return created_ms - now_ms <= self._skew_ms

    def _decrypt_v3(
        self,
        data: bytes,
        version: str,
        keys: dict[int, Key],
        now_ms: int,
        domain_or_app: str | None,
        client_type: ClientType,
        subdomains: bool,
    ) -> DecryptResult:
        if len(data) < _HEADER_LEN:
            return _INVALID_PAYLOAD
        master_key_id = _U32.unpack_from(data, 2)[0]
        master_key = keys.get(master_key_id)
        if master_key is None:
            return DecryptResult(_NOT_AUTHORIZED_FOR_MASTER_KEY, missing_key_id=master_key_id)
        if len(data) < _MIN_V3_LEN:
            return _INVALID_PAYLOAD
        prefix = data[0]
        # The type field is bits 2-3 of the prefix; like the SDK, anything but 0 is a phone.
        identity_type = _TYPES[1 if prefix & 0x0C else 0]
        scope = _SCOPES[(prefix >> 4) & 1]
        try:
            master = master_key.aead.decrypt(data[6:18], data[18:], None)
        except InvalidTag:
            return _INVALID_PAYLOAD
        expires_ms, created_ms, _, _, _, _, site_key_id = _MASTER.unpack_from(master)
        if expires_ms < now_ms:
            return DecryptResult(
                _EXPIRED,
                identity_type=identity_type,
                identity_scope=scope,
                expires_ms=expires_ms,
                created_ms=created_ms,
                version=version,
            )
        site_key = keys.get(site_key_id)
        if site_key is None:
            return DecryptResult(
                _NOT_AUTHORIZED_FOR_KEY,
                identity_type=identity_type,
                identity_scope=scope,
                expires_ms=expires_ms,
                missing_key_id=site_key_id,
                created_ms=created_ms,
                version=version,
            )
        try:
            site = site_key.aead.decrypt(master[33:45], master[45:], None)
        except InvalidTag:
            return _INVALID_PAYLOAD
        uid_len = len(site) - 36
        if uid_len != 32 and uid_len != 33:
            return _INVALID_PAYLOAD
        site_id, _, _, privacy_bits, established_ms, _ = _SITE.unpack_from(site)
        cstg = bool(privacy_bits & PRIVACY_BIT_CLIENT_SIDE_GENERATED)
        if cstg and client_type is _BIDSTREAM:
            names = self._allowed_names.get(site_id)
            parents = self._site_domains.get(site_id) if subdomains else None
            if not _name_listed(domain_or_app, names, parents):
                return DecryptResult(
                    _BAD_DOMAIN,
                    site_id=site_id,
                    site_key_site_id=site_key.site_id,
                    identity_type=identity_type,
                    identity_scope=scope,
                    established_ms=established_ms,
                    expires_ms=expires_ms,
                    created_ms=created_ms,
                    version=version,
                    is_client_side_generated=True,
                    privacy_bits=privacy_bits,
                )
        ok = self._lifetime_ok(client_type, created_ms, expires_ms, now_ms)
        return DecryptResult(
            _SUCCESS if ok else _BAD_LIFETIME,
            _b64encode(site[36:]).decode("ascii") if ok else None,
            site_id,
            site_key.site_id,
            identity_type,
            scope,
            established_ms,
            expires_ms,
            created_ms,
            version,
            cstg,
            privacy_bits,
        )

    def _decrypt_v2(
        self, data: bytes, keys: dict[int, Key], now_ms: int, client_type: ClientType
    ) -> DecryptResult:
        if len(data) < 5:
            return _INVALID_PAYLOAD
        master_key_id = _U32.unpack_from(data, 1)[0]
        master_key = keys.get(master_key_id)
        if master_key is None:
            return DecryptResult(_NOT_AUTHORIZED_FOR_MASTER_KEY, missing_key_id=master_key_id)
        master = _cbc_decrypt(master_key, data[5:21], data[21:])
        if master is None or len(master) < 12 + 16 + 16:
            return _INVALID_PAYLOAD
        expires_ms, site_key_id = _V2_MASTER.unpack_from(master)
        scope = self._identity_scope
        if expires_ms < now_ms:
            return DecryptResult(_EXPIRED, identity_scope=scope, expires_ms=expires_ms, version=V2)
        site_key = keys.get(site_key_id)
        if site_key is None:
            return DecryptResult(
                _NOT_AUTHORIZED_FOR_KEY,
                identity_scope=scope,
                expires_ms=expires_ms,
                version=V2,
                missing_key_id=site_key_id,
            )
        identity = _cbc_decrypt(site_key, master[12:28], master[28:])
        if identity is None or len(identity) < 8:
            return _INVALID_PAYLOAD
        site_id, id_len = struct.unpack_from(">II", identity)
        if len(identity) != 8 + id_len + 12:
            return _INVALID_PAYLOAD
        try:
            uid = identity[8 : 8 + id_len].decode("ascii")
        except UnicodeDecodeError:
            return _INVALID_PAYLOAD
        privacy_bits, established_ms = struct.unpack_from(">IQ", identity, 8 + id_len)
        # v2 carries no creation time: like the SDK, judge the remaining lifetime from now.
        ok = self._lifetime_ok(client_type, now_ms, expires_ms, now_ms)
        return DecryptResult(
            _SUCCESS if ok else _BAD_LIFETIME,
            uid if ok else None,
            site_id,
            site_key.site_id,
            None,
            scope,
            established_ms,
            expires_ms,
            None,
            V2,
            False,
            privacy_bits,
        )
