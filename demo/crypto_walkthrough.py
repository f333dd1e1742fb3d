"""A plain-words walk from an email address to a decrypted UID2 token, using uid2_crypto only.

Run: ``python -m demo.crypto_walkthrough``. Hashes and tokens are shown shortened on purpose.
"""

from __future__ import annotations

import base64
import os
import time

from uid2_crypto.identity import IdentityScope, IdentityType, normalize_email, sha256_b64
from uid2_crypto.keys import MASTER_KEYSET_ID, Key, KeyRing
from uid2_crypto.salts import BUCKET_COUNT, SaltSet, bucket_index, first_level_hash, raw_uid2
from uid2_crypto.tokens import TokenDecoder, TokenPayload, encode_advertising_token_v4

DAY_MS = 86_400_000


def short(s: str, n: int = 12) -> str:
    return s[:n] + "…" if len(s) > n else s


def main() -> int:
    now_ms = int(time.time() * 1000)
    now_s = now_ms // 1000
    email = "  Jane.Doe+news@GMail.com "
    print(f"1. A user signs in with {email.strip()!r}.")
    normalised = normalize_email(email)
    print(f"   Normalised (trim, lowercase, gmail dots and +tag dropped): {normalised!r}")
    email_hash = sha256_b64(normalised)
    print(f"   Its SHA-256, base64, is what a publisher may send: {short(email_hash)}")

    print("2. The Operator salts it. Secrets stay inside the Operator.")
    start = time.perf_counter()
    salts = SaltSet.generate(BUCKET_COUNT, os.urandom, now_ms)
    took = time.perf_counter() - start
    print(f"   A fresh salt set of {len(salts):,} buckets was generated in {took:.2f} s.")
    first_level_salt = base64.b64encode(os.urandom(32)).decode()
    flh = first_level_hash(base64.b64decode(email_hash), first_level_salt)
    index = bucket_index(flh)
    raw = raw_uid2(flh, salts.salt(index))
    raw_b64 = base64.b64encode(raw).decode()
    print(f"   First-level hash → bucket {index}; raw UID2 {short(raw_b64)}")
    days = (salts.refresh_from(index) - now_ms) / DAY_MS
    print(f"   This bucket's salt is due to rotate in about {days:.0f} days.")

    print("3. The Operator encrypts the raw UID2 into an advertising token (v4).")
    master = Key(1, MASTER_KEYSET_ID, -1, now_s, now_s, now_s + 30 * 86400, os.urandom(32))
    site_key = Key(2, 99999, 9000, now_s, now_s, now_s + 30 * 86400, os.urandom(32))
    payload = TokenPayload(
        raw_uid=raw,
        identity_type=IdentityType.EMAIL,
        identity_scope=IdentityScope.UID2,
        site_id=9000,
        publisher_id=0,
        client_key_id=0,
        privacy_bits=1,
        established_ms=now_ms,
        refreshed_ms=now_ms,
        created_ms=now_ms,
        expires_ms=now_ms + 3 * DAY_MS,
    )
    token = encode_advertising_token_v4(payload, master, site_key, os.urandom)
    print(f"   Token ({len(token)} characters, opaque to the publisher): {short(token, 16)}")

    print("4. An SSP or DSP holding the keys decrypts it in the bid stream.")
    decoder = TokenDecoder(
        KeyRing([master, site_key]),
        max_bidstream_lifetime_s=3 * 86400,
        max_sharing_lifetime_s=30 * 86400,
    )
    result = decoder.decrypt(token, now_ms + 1000)
    same = "the same" if result.raw_uid == raw_b64 else "a DIFFERENT"
    print(f"   Status {result.status.name}; site {result.site_id}; {same} raw UID2.")

    print("5. What goes wrong, and how the decoder says so (it never raises):")
    later = decoder.decrypt(token, now_ms + 4 * DAY_MS)
    print(f"   Four days later the token is refused: {later.status.name}")
    tampered = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    print(f"   One character changed: {decoder.decrypt(tampered, now_ms).status.name}")
    print(f"   Not a token at all: {decoder.decrypt('hello, world', now_ms).status.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
