from __future__ import annotations

import pytest

from svc_common.names import check_app_name, normalise_domain


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("news.example.com", "news.example.com"),
        ("  News.Example.COM. ", "news.example.com"),
        ("localhost", "localhost"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a-b.c0m", "a-b.c0m"),
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
