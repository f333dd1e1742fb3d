"""Setting values every service's CLI parses the same way (flags and environment variables), so
that the four `serve` commands agree on what they accept and refuse it in one line, at start-up.

Each function raises SettingError, whose message is one line fit for stderr; it is also an
`argparse.ArgumentTypeError`, so the functions serve as argparse `type=` callables as they are."""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from svc_common.sensitive import shown

# Levels configure_logging understands; it falls back to INFO on anything else, so a typo would
# otherwise go unnoticed.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


E = TypeVar("E", bound=Enum)


class SettingError(argparse.ArgumentTypeError, ValueError):
    """A setting value that cannot be used; the message is one line."""


def log_level(text: str) -> str:
    """The canonical name of a log level given in any case, e.g. "info" -> "INFO"."""
    name = text.strip().upper()
    if name not in LOG_LEVELS:
        raise SettingError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {shown(text)}")
    return name


_INTEGER = re.compile(r"[+-]?[0-9]+")


def finite_float(text: str) -> float:
    """A number; NaN and infinities are refused: every comparison with NaN is false, so a NaN
    price or interval passes range checks and then silently never matches (a DSP that never
    bids), and an infinite deadline never fires."""
    # ASCII, no underscores: Python's float() also reads fullwidth digits and "1_0", which no other
    # program reading the same setting (a shell script, a config tool) takes for a number.
    stripped = text.strip()
    try:
        if not stripped.isascii() or "_" in stripped:
            raise ValueError(stripped)
        value = float(stripped)
    except ValueError:
        raise SettingError(f"{shown(text)} is not a number") from None
    if not math.isfinite(value):
        raise SettingError(f"{shown(text)} is not a finite number")
    return value


def integer(text: str) -> int:
    """A whole number in ASCII decimal (int() also reads fullwidth digits and "1_000")."""
    stripped = text.strip()
    if not _INTEGER.fullmatch(stripped):
        raise SettingError(f"{shown(text)} is not an integer")
    return int(stripped)


def integer_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """`integer`, refusing anything below `minimum` or above `maximum`."""

    def parse(text: str) -> int:
        value = integer(text)
        if value < minimum:
            raise SettingError(f"must be at least {minimum}, got {shown(str(value), quoted=False)}")
        if maximum is not None and value > maximum:
            raise SettingError(f"must be at most {maximum}, got {shown(str(value), quoted=False)}")
        return value

    return parse


def number_in(
    minimum: float, maximum: float | None = None, unit: str = ""
) -> Callable[[str], float]:
    """`finite_float`, refusing anything below `minimum` or above `maximum` (`unit` follows the
    bounds in the message, e.g. " s")."""

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = (
                f"at least {minimum:g}{unit}"
                if maximum is None
                else f"between {minimum:g} and {maximum:g}{unit}"
            )
            # Every digit the value has (repr), as .g would round 1.0000001 to "1".
            raise SettingError(f"must be {bounds}, got {shown(_shortest(value), quoted=False)}")
        return value

    return parse


def _shortest(value: float) -> str:
    """1.0 as "1", 1.0000001 as itself: the shortest text that reads back as `value`."""
    return str(int(value)) if value.is_integer() else repr(value)


def split_host_port(text: str) -> tuple[str, int]:
    """("127.0.0.1", 50051) from "127.0.0.1:50051"; IPv6 hosts in brackets ("[::1]:0" gives
    "::1"). Port 0 means "pick a free one" where an address is bound."""
    host, sep, port = text.strip().rpartition(":")
    # isascii: str.isdigit() is true for '²' (int() then raises ValueError, a traceback
    # instead of one line and exit 2) and for other scripts' digits (U+0665), which gRPC rejects.
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise SettingError(f"must be HOST:PORT, got {shown(text, numbers=False)}")
    # gRPC reads "::1:0" as another address than the one meant, and "[127.0.0.1]" as none: an
    # IPv6 address goes in brackets, and only an IPv6 address does.
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingError(
                f"only an IPv6 address goes in brackets, got {shown(text, numbers=False)}"
            ) from None
    elif ":" in host or "[" in host or "]" in host:
        raise SettingError(
            f"must be HOST:PORT, an IPv6 host in brackets ([::1]:PORT), got "
            f"{shown(text, numbers=False)}"
        )
    return host, int(port)


def host_port(text: str) -> str:
    """`text`, once `split_host_port` accepts it."""
    split_host_port(text)
    return text.strip()


# gRPC name-resolver targets a channel understands (dns:///op.internal:50051 to resolve every
# address of a name, ipv4:10.0.0.5:50051,10.0.0.6:50051): accepted where a peer is dialled.
# Checked here in full: gRPC core takes a malformed one (ipv4:999.1.1.1:50051) at start, then
# writes multi-line errors of its own and fails every call as if the peer refused it.
_RESOLVER_TARGET = re.compile(r"(?i:(dns|ipv4|ipv6)):([!-~]*)")


def dial_address(text: str) -> str:
    """A peer's address: HOST:PORT as `host_port` takes it, or a gRPC resolver target passed
    to the channel as it is: dns:[//AUTHORITY/]HOST:PORT, ipv4:ADDRESS:PORT[,ADDRESS:PORT...]
    or ipv6:[ADDRESS]:PORT[,[ADDRESS]:PORT...]. Every address needs a port other than 0."""
    target = text.strip()
    resolver = _RESOLVER_TARGET.fullmatch(target)
    try:
        if resolver is None:
            _dialled_port(split_host_port(target))
        else:
            _check_resolver_target(resolver.group(1).lower(), resolver.group(2))
    except SettingError as exc:
        why = exc.why if isinstance(exc, UndiallableAddress) else ""
        raise UndiallableAddress(
            f"must be HOST:PORT or a gRPC resolver target such as dns:///HOST:PORT or "
            f"ipv4:ADDRESS:PORT,ADDRESS:PORT, got {shown(text, numbers=False)}{why}",
            why,
        ) from None
    return target


def lists_addresses(address: str) -> bool:
    """Whether a `dial_address` lists more than one address (ipv4:A:P,B:P or ipv6:...)."""
    resolver = _RESOLVER_TARGET.fullmatch(address.strip())
    return resolver is not None and resolver.group(1).lower() != "dns" and "," in address


class UndiallableAddress(SettingError):
    """A peer address refused; `why` (" (...)", or "") says why when the address has the
    right shape and still cannot be dialled: the shape alone would not tell."""

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why


def _check_resolver_target(scheme: str, rest: str) -> None:
    if scheme == "dns":
        if rest.startswith("//"):
            # The DNS server to ask: gRPC refuses one without a port ("Cannot parse
            # authority") at the first call, not at start.
            authority, sep, rest = rest[2:].partition("/")
            if not sep:
                raise UndiallableAddress("", " (no HOST:PORT after the authority)")
            if authority:
                _dialled_port(_authority(authority))
        _dialled_port(split_host_port(rest))
        return
    # ipv4: and ipv6: list addresses, each with its port (gRPC refuses one without).
    for address in rest.split(","):
        host, _ = _dialled_port(split_host_port(address))
        try:
            if scheme == "ipv4":
                ipaddress.IPv4Address(host)
            elif address.strip().startswith("["):
                ipaddress.IPv6Address(host)
            else:
                raise ValueError(host)
        except ValueError:
            raise UndiallableAddress("", f" (not an {scheme} address)") from None


def _authority(authority: str) -> tuple[str, int]:
    try:
        return split_host_port(authority)
    except SettingError:
        raise UndiallableAddress("", " (the DNS server's authority needs HOST:PORT)") from None


def _dialled_port(split: tuple[str, int]) -> tuple[str, int]:
    if split[1] == 0:
        raise UndiallableAddress("", " (port 0 picks a port to listen on: nothing to dial)")
    return split


def choice(enum_type: type[E]) -> Callable[[str], E]:
    """A parser for one of `enum_type`'s values, in any case."""
    values = [member.value for member in enum_type]
    names = " or ".join(values) if len(values) == 2 else "one of " + ", ".join(values)

    def parse(text: str) -> E:
        word = text.strip().lower()
        for member in enum_type:
            if member.value.lower() == word:
                return member
        raise SettingError(f"must be {names}")

    return parse


def api_key(text: str) -> str:
    """An API key as sent in gRPC metadata (`authorization: Bearer KEY`), which carries printable
    ASCII only: a key with a newline or a non-ASCII character would start fine and then fail
    every call. The message never repeats the key."""
    if not text or not all("!" <= ch <= "~" for ch in text):
        raise SettingError("must be printable ASCII without spaces (is it the whole key?)")
    return text


def boolean(text: str) -> bool:
    """1/0, true/false, yes/no in any case. Anything else is refused rather than read as false:
    a typo in a switch should not quietly turn a feature on or off."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SettingError(f"{shown(text)} is not a boolean (1/0, true/false, yes/no)")
