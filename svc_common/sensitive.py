"""Whether a string a user or caller gave may be personal data or a secret, so that it is not
repeated where it would be kept: a log line (a caller's own request id, svc_common.edge_log) or
an error message (`shown`, for a value given to a CLI flag or an admin command, which a
service's log also holds when it fails to start).

The rules catch what a client or an admin has at hand by mistake (an email, a phone number, a
hash of either, an API key, a token, or a piece of one), not data encoded on purpose to slip
through: an email spelt with ".at." passes."""

from __future__ import annotations

import re

# A phone number, whole or inside a longer string ("tel:12065557781"): 9 digits or more in a
# row (a national number has that many in most countries; a date, 8, is kept).
_PHONE_RUN = re.compile(r"[0-9]{9,}")
# A phone number grouped by separators ("+1 (206) 555-7781", "206.555.7781"): only digits and
# those, with 9 digits or more in all.
_PHONE_GROUPED = re.compile(r"\+?[0-9 ().-]+")
# A phone number written in groups inside a longer string ("user-206-555-7781",
# "tel.206.555.7781", "u:1:206:555:7781"): three groups or more of 1-4 digits joined by single
# separators, with 9 digits or more in all (a date, "2026-11-29", has 8).
_PHONE_IN_GROUPS = re.compile(r"\d{1,4}(?:[-.:x ()]\d{1,4}){2,}")
# A UUID anywhere: where a run or groups of digits are chance ("req-<uuid>").
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# Machine ids made of hex, where a run of digits is chance: a UUID, a span id, a Mongo ObjectId,
# a trace id.
_HEX_ID = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|[0-9A-Fa-f]{16}|[0-9A-Fa-f]{24}|[0-9A-Fa-f]{32}"
)
# A hash of DII in hex, whole or cut short: 40 hex digits or more in a row (a SHA-1's length;
# trace ids have 32).
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{40,}")
# A SHA-256 (a hash of DII, a raw UID2, a key's secret) in base64: 43 characters of base64url,
# or standard base64 with its '+', '/' or '=' (a run of 40 or more).
_B64URL_SHA256 = re.compile(r"[A-Za-z0-9_-]{43}")
# ... or inside a longer id ("req-" + one): a base64url run of 43 or more mixing cases and
# digits, which its '-' and '_' may cut into runs too short for _SECRET_RUN (a long name made of
# words, "Northwind-Traders-Programmatic-Advertising-EU", has no digits). Request ids are
# screened harder (edge_log.loggable_id).
B64URL_RUN = re.compile(r"[A-Za-z0-9_-]{43,}")
_B64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
# An API key of ours, whole or in part (the operator's UID2-C-/EUID-C-, the SSP's UID2-SSP-).
_OUR_KEY = re.compile(r"(?i)(UID2|EUID)-(C|SSP)-")
# Another random secret, a token or a piece of one: 20 letters and digits or more in one run,
# mixing upper case, lower case and digits. Ids people and libraries make (UUIDs, hex trace
# ids, ULIDs, Nano IDs, hand-made ids joined by '-' or '_') have no such run, except base62
# ids that are the whole string: a Nano ID (21 characters), a base62 UUID (22) or a KSUID (27).
_SECRET_RUN = re.compile(r"[A-Za-z0-9]{20,}")
_BASE62_ID_LENGTHS = (21, 22, 27)  # a Nano ID, a base62 UUID, a KSUID


def mixes_all_three(run: str) -> bool:
    """Upper case, lower case and digits in one run: random, not a word or a number."""
    return bool(re.search(r"[a-z]", run) and re.search(r"[A-Z]", run) and re.search(r"[0-9]", run))


def _secret_like(text: str) -> bool:
    if _OUR_KEY.search(text) is not None:
        return True
    for run in _SECRET_RUN.findall(text):
        if run == text and len(run) in _BASE62_ID_LENGTHS:
            continue
        if mixes_all_three(run):
            return True
    return False


def _phone_like(text: str) -> bool:
    if _HEX_ID.fullmatch(text):
        return False
    text = _UUID.sub("-", text)
    if _PHONE_RUN.search(text):
        return True
    if _PHONE_GROUPED.fullmatch(text) and sum(c.isdigit() for c in text) >= 9:
        return True
    return any(sum(c.isdigit() for c in m.group()) >= 9 for m in _PHONE_IN_GROUPS.finditer(text))


def may_be_sensitive(text: str, *, numbers: bool = True) -> bool:
    """True when `text` may be, or hold, an email, a phone number, a hash, a key or a token.
    `numbers=False`: long numbers are no phone numbers in it (a host name such as an AWS load
    balancer's has a 10-digit one, an IP address 9 or more digits in groups)."""
    return (
        "@" in text
        or (numbers and _phone_like(text))
        or _HEX_RUN.search(text) is not None
        or _B64URL_SHA256.fullmatch(text) is not None
        or any(mixes_all_three(run) for run in B64URL_RUN.findall(text))
        or any("+" in r or "/" in r or r.endswith("=") for r in _B64_RUN.findall(text))
        or _secret_like(text)
    )


NOT_SHOWN = "(a value not repeated here: it may be personal data or a secret)"


def shown(text: str, limit: int = 80, *, quoted: bool = True, numbers: bool = True) -> str:
    """`text` for an error message (at most `limit` characters, `quoted` as repr), or a note
    that it is not repeated when it `may_be_sensitive` (with `numbers`)."""
    if may_be_sensitive(text, numbers=numbers):
        return NOT_SHOWN
    return repr(text[:limit]) if quoted else text[:limit]
