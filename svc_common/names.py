"""Site domains and app names as admins type them: checked and normalised once, where they are
registered, so what the services store and publish (the operator's key JSON, the SSP's
inventory allow-lists) is always a plain host name or app id."""

from __future__ import annotations

import re
import unicodedata
from functools import cache

import idna
from publicsuffixlist import PublicSuffixList

from svc_common.sensitive import may_be_sensitive, shown

MAX_ACCOUNT_NAME_CHARS = 64
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Android package names, iOS bundle ids, numeric App Store ids.
_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def normalise_domain(text: str) -> str:
    """`text` as a lower-case ASCII host name (IDNs in punycode); ValueError if it is not one."""
    host = text.strip().lower()
    # One trailing dot is the DNS root (news.example.com. is news.example.com); two are no name.
    host = host[:-1] if host.endswith(".") else host
    try:
        host = _to_ascii(host)
    except UnicodeError:  # idna.IDNAError is one
        raise ValueError(f"{shown(text.strip())} is not a domain name") from None
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{shown(text.strip())} is not a domain name (like news.example.com: "
            "no scheme, port or path)"
        )
    return host


def site_domain(text: str) -> str:
    """A domain a site registers (`uid2-operator site add --domain`, `uid2-ssp publisher add
    --domain`): normalised, and not a public suffix. Allow-lists take a registered domain's
    subdomains too, so "co.uk" or "github.io" would let every site under it in."""
    host = normalise_domain(text)
    if host != "localhost" and _public_suffixes().is_public(host):
        raise ValueError(
            f"{host!r} is a public suffix, under which anyone can register a name: register "
            "the site's own domain (like example.co.uk)"
        )
    return host


@cache
def _public_suffixes() -> PublicSuffixList:
    # The list as the package ships it (no download): loaded once, on the first registration.
    return PublicSuffixList()


def _to_ascii(host: str) -> str:
    """Non-ASCII labels as browsers send them: UTS #46 non-transitional mapping, then punycode
    (IDNA 2008). Python's own "idna" codec is IDNA 2003, which maps "straße.de" to "strasse.de"
    where a browser's location.hostname says "xn--strae-oqa.de": an allow-list would then miss
    the pages it was meant for. ASCII labels are left to the caller's check: IDNA 2008 refuses
    hyphens in places browsers accept ("r1---sn-abc.example")."""
    if host.isascii():
        return host
    mapped = idna.uts46_remap(host, std3_rules=False, transitional=False).rstrip(".")
    return ".".join(
        label if label.isascii() else idna.alabel(label).decode("ascii")
        for label in mapped.split(".")
    )


def domain_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """`host` is one of the `allowed` domains or a subdomain of one (both normalised)."""
    return any(host == d or host.endswith("." + d) for d in allowed)


def check_app_name(text: str) -> str:
    """`text` stripped, if it looks like an app id (com.example.app, 123456789)."""
    name = text.strip()
    if not _APP.match(name):
        raise ValueError(f"{shown(name)} is not an app name (like com.example.app)")
    return name


def account_name(text: str) -> str:
    """The name of an account that is logged with every call it makes (the SSP's publishers
    and subscribers), NFKC-normalised: at most 64 printable characters (a company's own: "Acme,
    Inc.", "Café Média"), with a letter or digit, and not DII, a hash, a key or a token in any
    script's digits or in fullwidth forms (svc_common.sensitive reads ASCII). ValueError says
    why."""
    name = unicodedata.normalize("NFKC", text).strip()
    # First: the shape's message below repeats the name.
    ascii_digits = "".join(str(unicodedata.decimal(c, "")) or c for c in name)
    if may_be_sensitive(name) or may_be_sensitive(ascii_digits):
        raise ValueError(
            "the name is not an account name: it looks like an email, a phone number, a hash "
            "or a key, and it is logged with every call"
        )
    if (
        not 0 < len(name) <= MAX_ACCOUNT_NAME_CHARS
        or not name.isprintable()
        or not any(c.isalnum() for c in name)
        or _longest_combining_run(name) > _MAX_COMBINING_RUN
    ):
        raise ValueError(
            f"{shown(name)} is not an account name: 1 to {MAX_ACCOUNT_NAME_CHARS} printable "
            "characters, a letter or digit among them"
        )
    return name


# Accents stacked past this on one letter make a name that renders as noise.
_MAX_COMBINING_RUN = 3


def _longest_combining_run(name: str) -> int:
    longest = run = 0
    for c in name:
        run = run + 1 if unicodedata.combining(c) else 0
        longest = max(longest, run)
    return longest
