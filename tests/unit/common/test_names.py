from __future__ import annotations

import pytest

from svc_common.names import (
    check_app_name,
    domain_allowed,
    normalise_domain,
    site_domain,
)


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("news.example.com", "news.example.com"),
        ("  News.Example.COM. ", "news.example.com"),
        ("localhost", "localhost"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a-b.c0m", "a-b.c0m"),
        # As browsers (UTS #46 non-transitional, IDNA 2008) write them in location.hostname;
        # IDNA 2003 made the first "strasse.de" and the second "xn--4xa.gr".
        ("straße.de", "xn--strae-oqa.de"),
        ("ς.gr", "xn--3xa.gr"),
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\uff0ecom", "example.com"),  # full width
        ("例え.テスト.", "xn--r8jz45g.xn--zckzah"),
        # ASCII labels are not held to IDNA 2008's hyphen rule, in a mixed name neither.
        ("r1---sn-abc.example", "r1---sn-abc.example"),
        ("r1---sn.bücher.example", "r1---sn.xn--bcher-kva.example"),
    ],
)
def test_domains_are_normalised(typed: str, stored: str) -> None:
    assert normalise_domain(typed) == stored


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "   ",
        "not a domain!!",
        "https://news.example.com",
        "news.example.com/path",
        "news.example.com:443",
        "-bad.example.com",
        "bad-.example.com",
        "a..b",
        "x" * 64 + ".com",
        ("abc." * 64) + "com",
        "a\x00b.com",
        "bü cher.example",
        "-bücher.example",
        "bücher..example",
        "news.example.com..",  # one trailing dot is the root; two are no name
        ".",
    ],
)
def test_non_domains_are_refused(typed: str) -> None:
    with pytest.raises(ValueError, match="not a domain name"):
        normalise_domain(typed)


def test_app_names() -> None:
    assert check_app_name(" com.example.app ") == "com.example.app"
    assert check_app_name("123456789") == "123456789"
    for bad in ("", "com example", "com/example", ".hidden", "x" * 300):
        with pytest.raises(ValueError, match="not an app name"):
            check_app_name(bad)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("example.com", True), ("www.example.com", True), ("badexample.com", False), ("com", False)],
)
def test_domain_allowed_is_the_domain_or_a_subdomain(host: str, allowed: bool) -> None:
    assert domain_allowed(host, ("example.com", "other.test")) is allowed


@pytest.mark.parametrize("suffix", ["co.uk", "com", "github.io", "blogspot.com", "CO.UK.", "de"])
def test_a_public_suffix_is_not_a_site_domain(suffix: str) -> None:
    with pytest.raises(ValueError, match="is a public suffix"):
        site_domain(suffix)


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("example.co.uk", "example.co.uk"),
        ("me.github.io", "me.github.io"),
        (" News.Example.com ", "news.example.com"),
        ("straße.de", "xn--strae-oqa.de"),
        ("localhost", "localhost"),  # pages under development
        ("other.test", "other.test"),
    ],
)
def test_site_domains(typed: str, stored: str) -> None:
    assert site_domain(typed) == stored
