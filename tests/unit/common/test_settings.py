"""Setting values the four `serve` commands share (svc_common.settings): a log level, a number
or a switch that cannot be used is one line on stderr and exit 2, before anything starts."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from dsp_svc.cli import main as dsp_main
from operator_svc.cli import main as operator_main
from publisher_svc.cli import main as publisher_main
from publisher_svc.model import StorageMode
from ssp_svc.cli import main as ssp_main
from ssp_svc.config import ConfigError, parse_bidder
from svc_common.settings import (
    SettingError,
    api_key,
    boolean,
    choice,
    dial_address,
    finite_float,
    integer,
    log_level,
    number_in,
    split_host_port,
)

Main = Callable[[Sequence[str] | None], int]

PUBLISHER = [
    "serve", "--listen", "127.0.0.1:0", "--operator-address", "127.0.0.1:1",
    "--operator-api-key", "k", "--site-id", "1", "--ssp-address", "127.0.0.1:2",
    "--ssp-api-key", "k",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every case here must stop at parsing; a regression would otherwise serve until killed.
    def started(*_: object, **__: object) -> NoReturn:
        raise AssertionError("the service started")

    for module in ("operator_svc.server", "publisher_svc.server", "ssp_svc.server",
                   "dsp_svc.server"):  # fmt: skip
        monkeypatch.setattr(f"{module}.create_server", started)


def test_log_level_is_one_of_the_five_names_in_any_case() -> None:
    assert log_level("warning") == "WARNING" and log_level(" Debug ") == "DEBUG"
    for bad in ("LOUD", "", "NOTSET", "20"):
        with pytest.raises(SettingError):
            log_level(bad)


def test_finite_float_refuses_nan_and_infinities() -> None:
    assert finite_float("1.5") == 1.5 and finite_float("-2") == -2.0
    for bad in ("nan", "NaN", "inf", "-inf", "Infinity", "1e999", "x", ""):
        with pytest.raises(SettingError):
            finite_float(bad)


def test_numbers_are_ascii_decimal() -> None:
    # Python reads these as numbers; a shell script or config tool reading the same setting
    # would not, and a site id typed in fullwidth digits would name another site than it shows.
    assert integer(" 7 ") == 7 and integer("-3") == -3 and finite_float(" 2.5 ") == 2.5
    for bad in ("\uff11\uff12", "1_000", "\u0661", "1.0", "1e3", "", "+"):
        with pytest.raises(SettingError):
            integer(bad)
    for bad in ("\uff11.\uff15", "1_0.5", "\u0661"):
        with pytest.raises(SettingError):
            finite_float(bad)


def test_number_in_says_which_value_it_refused() -> None:
    """Not rounded to six digits: "got 1" for 1.0000001 would contradict "between 0.01 and 1"."""
    within = number_in(0.01, 1.0, " s")
    assert within("1") == 1.0 and within("0.01") == 0.01
    with pytest.raises(SettingError, match=r"^must be between 0.01 and 1 s, got 1.0000001$"):
        within("1.0000001")
    with pytest.raises(SettingError, match=r"^must be at least 1, got 0.9999999$"):
        number_in(1.0)("0.9999999")
    with pytest.raises(SettingError, match=r", got 0$"):
        number_in(1.0)("1e-400")


def test_boolean_accepts_only_clear_words() -> None:
    for word in ("1", "true", "TRUE", "yes", "Yes"):
        assert boolean(word) is True
    for word in ("0", "false", "False", "no", "NO"):
        assert boolean(word) is False
    for bad in ("maybe", "", "on", "2", "y"):
        with pytest.raises(SettingError):
            boolean(bad)


def _one_line_exit_2(
    capsys: pytest.CaptureFixture[str], main: Main, argv: list[str], *words: str
) -> str:
    # Garbage an earlier test left (a destroyed task, an unclosed socket) may print when the
    # collector runs; let it print before the output under test is captured, not inside it.
    gc.collect()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err
    return err


def _run_in(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _serve_argv(tmp_path: Path) -> dict[str, tuple[Main, list[str]]]:
    (tmp_path / "ssp").mkdir()
    return {
        "operator": (operator_main, ["serve", "--data-dir", str(tmp_path / "op")]),
        "publisher": (publisher_main, [*PUBLISHER, "--data-dir", str(tmp_path / "pub")]),
        "ssp": (ssp_main, ["serve", "--data-dir", str(tmp_path / "ssp")]),
        "dsp": (dsp_main, ["serve", "--name", "d"]),
    }


@pytest.mark.parametrize("service", ["operator", "publisher", "ssp", "dsp"])
def test_every_serve_refuses_an_unknown_log_level(
    service: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main, argv = _serve_argv(tmp_path)[service]
    _one_line_exit_2(capsys, main, [*argv, "--log-level", "LOUD"], "log level", "LOUD")


@pytest.mark.parametrize("service", ["operator", "publisher", "ssp", "dsp"])
def test_every_serve_refuses_an_unknown_log_level_from_the_environment(
    service: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"UID2_{service.upper()}_LOG_LEVEL", "loud")
    main, argv = _serve_argv(tmp_path)[service]
    _one_line_exit_2(capsys, main, argv, "log level", "loud")


@pytest.mark.parametrize(
    ("main", "argv", "env"),
    [
        (dsp_main, ["serve", "--name", "d", "--base-price", "nan"], {}),
        (dsp_main, ["serve", "--name", "d", "--base-price", "inf"], {}),
        (dsp_main, ["serve", "--name", "d"], {"UID2_DSP_BASE_PRICE": "inf"}),
        (dsp_main, ["serve", "--name", "d"], {"UID2_DSP_IDENTIFIED_BONUS": "nan"}),
        (ssp_main, ["serve", "--data-dir", ".", "--key-refresh-s", "inf"], {}),
        (ssp_main, ["serve", "--data-dir", "."], {"UID2_SSP_KEY_REFRESH_S": "nan"}),
        (publisher_main, [*PUBLISHER, "--data-dir", "pub", "--ssp-timeout", "inf"], {}),
        (publisher_main, [*PUBLISHER, "--data-dir", "pub"],
         {"UID2_PUBLISHER_OPERATOR_TIMEOUT": "inf"}),
        (publisher_main, [*PUBLISHER, "--data-dir", "pub", "--refresh-interval", "nan"], {}),
    ],
)  # fmt: skip
def test_non_finite_numbers_are_refused_at_start_up(
    main: Main,
    argv: list[str],
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _run_in(tmp_path, env, monkeypatch)
    _one_line_exit_2(capsys, main, argv, "finite")


def test_publisher_switch_from_the_environment_must_be_a_clear_boolean(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UID2_PUBLISHER_NO_BACKGROUND_REFRESH", "maybe")
    argv = [*PUBLISHER, "--data-dir", str(tmp_path / "pub")]
    _one_line_exit_2(capsys, publisher_main, argv, "UID2_PUBLISHER_NO_BACKGROUND_REFRESH", "maybe")


@pytest.mark.parametrize("key", ["", "UID2-C-L-1\n", "UID2 key", "cl\u00e9"])
def test_an_api_key_that_metadata_cannot_carry_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(SettingError) as caught:
        api_key(key)
    assert key.strip() == "" or key.strip() not in str(caught.value)


def test_a_whole_api_key_passes() -> None:
    assert api_key("UID2-C-L-123-abc+/=") == "UID2-C-L-123-abc+/="


_READER = ["--operator", "127.0.0.1:1", "--operator-api-key", "k"]


@pytest.mark.parametrize(
    ("main", "argv", "env", "words"),
    [
        # A key refresh every microsecond: 3,000 calls to the operator in 4 s from one DSP.
        (dsp_main, ["serve", "--name", "d", *_READER, "--key-refresh-s", "0.000001"], {},
         ["between 1 and 86400"]),
        (ssp_main, ["serve", "--data-dir", ".", "--key-refresh-s", "1e7"], {},
         ["between 1 and 86400"]),
        (publisher_main, [*PUBLISHER, "--data-dir", "pub", "--refresh-interval", "1e-300"], {},
         ["--refresh-interval", "at least 0.01"]),
        # Keys metadata cannot carry: they started, then failed every call.
        (publisher_main, [*PUBLISHER[:5], *PUBLISHER[7:], "--data-dir", "pub"],
         {"UID2_PUBLISHER_OPERATOR_API_KEY": "UID2-C-L-1-secret\n"},
         ["UID2_PUBLISHER_OPERATOR_API_KEY", "printable ASCII"]),
        (dsp_main, ["serve", "--name", "d", "--operator", "127.0.0.1:1"],
         {"UID2_DSP_OPERATOR_API_KEY": "secr\u00e9t"}, ["printable ASCII"]),
        (ssp_main, ["serve", "--data-dir", ".", "--operator", "127.0.0.1:1",
                    "--operator-api-key", "two words"], {}, ["printable ASCII"]),
    ],
)  # fmt: skip
def test_settings_that_would_misbehave_later_are_refused_at_start_up(
    main: Main,
    argv: list[str],
    env: dict[str, str],
    words: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _run_in(tmp_path, env, monkeypatch)
    err = _one_line_exit_2(capsys, main, argv, *words)
    assert "secr" not in err and "two words" not in err  # a key is never repeated


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("[::1]:0", ("::1", 0)),
        ("[::]:8080", ("::", 8080)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_host_port_splits(text: str, split: tuple[str, int]) -> None:
    assert split_host_port(text) == split


@pytest.mark.parametrize(
    "text", ["127.0.0.1", ":80", "h:-1", "h:65536", "h:x", "unix:/tmp/s", "h:\u00b2", "h:\u0665"]
)
def test_host_port_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(SettingError, match="must be HOST:PORT"):
        split_host_port(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # gRPC would bind "::1:0" as another address, and fail on the others, in a core log
        # line of its own before ours.
        ("::1:0", "an IPv6 host in brackets"),
        ("::ffff:127.0.0.1:0", "an IPv6 host in brackets"),
        ("dns:///h:80", "an IPv6 host in brackets"),
        ("[127.0.0.1]:0", "only an IPv6 address goes in brackets"),
        ("[h]:80", "only an IPv6 address goes in brackets"),
        ("[::1:0", "an IPv6 host in brackets"),
    ],
)
def test_ipv6_hosts_go_in_brackets_and_only_they_do(text: str, message: str) -> None:
    with pytest.raises(SettingError, match=re.escape(message)):
        split_host_port(text)


@pytest.mark.parametrize(
    "target",
    ["dns:///operator.internal:50051", "dns:op:443", "ipv4:10.0.0.5:50051,10.0.0.6:50051",
     "ipv6:[::1]:50051", "op.internal:50051", "[::1]:50051", "DNS:///op:443",
     "dns://10.0.0.53:53/op.internal:50051", "dns:///[::1]:50051", "IPv4:10.0.0.5:1",
     "ipv6:[::1]:50051,[fe80::1%eth0]:65535"],
)  # fmt: skip
def test_a_peer_may_be_a_grpc_resolver_target(target: str) -> None:
    # What a channel understands, where a peer is dialled (not where the service listens).
    assert dial_address(f" {target} ") == target
    assert parse_bidder(f"alpha={target}").address == target


@pytest.mark.parametrize(
    "target",
    ["dns:///op", "unix:/tmp/s", "xds:///op:1", "::1:50051", "dns:op:99999", "ipv4:1.2.3.4:0"],
)
def test_a_peer_address_still_needs_a_port_and_a_known_form(target: str) -> None:
    with pytest.raises(SettingError):
        dial_address(target)


@pytest.mark.parametrize(
    "target",
    [
        # gRPC core took these at start, then failed every call as if the peer refused it.
        "ipv4:10.0.0.5:99999,127.0.0.1:50051", "ipv4:999.1.1.1:50051", "ipv4:10.0.0.5:50051,",
        "ipv4:10.0.0.5,10.0.0.6:50051", "ipv4:[::1]:50051", "ipv4:op.internal:50051",
        "ipv4:010.0.0.5:50051", "ipv4:10.0.0.5:0", "ipv6:::1:50051", "ipv6:[::1]:65536",
        "ipv6:[10.0.0.5]:50051", "ipv6:[::1]:50051,[::g]:50051", "ipv6:[::1]", "dns:op:0",
        "dns://op:50051", "dns:///op:50051:1", "dns:///::1:50051", "dns:///op:\u00b2",
        "dns:/// op:50051", "op:0",
        # gRPC refuses a DNS server's authority without its port, at the first call.
        "dns://10.0.0.53/op.internal:50051", "dns://10.0.0.53:0/op:1",
    ],
)  # fmt: skip
def test_every_address_of_a_resolver_target_is_checked(
    target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SettingError, match=r"^must be HOST:PORT or a gRPC resolver target"):
        dial_address(target)
    with pytest.raises(ConfigError, match=r"^bidder must be NAME=HOST:PORT"):
        parse_bidder(f"alpha={target}")
    argv = [
        *PUBLISHER[:3],
        "--operator-address",
        target,
        *PUBLISHER[5:],
        "--data-dir",
        str(tmp_path),
    ]
    _one_line_exit_2(capsys, publisher_main, argv, "--operator-address", "resolver target")


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("127.0.0.1:0", "(port 0 picks a port to listen on: nothing to dial)"),
        ("ipv4:999.1.1.1:50051", "(not an ipv4 address)"),
        ("dns://10.0.0.53/op:1", "(the DNS server's authority needs HOST:PORT)"),
    ],
)
def test_an_address_of_the_right_shape_is_refused_saying_why(target: str, why: str) -> None:
    """ "must be HOST:PORT ..., got '127.0.0.1:0'" named a HOST:PORT and no reason (diff review)."""
    with pytest.raises(SettingError) as refused:
        dial_address(target)
    assert str(refused.value).endswith(f"got {target!r} {why}")
    with pytest.raises(ConfigError) as bidder:
        parse_bidder(f"alpha={target}")
    assert str(bidder.value).endswith(why)


def test_choice_reads_an_enum_value_in_any_case() -> None:
    parse = choice(StorageMode)
    assert parse(" Client ") is StorageMode.CLIENT
    with pytest.raises(SettingError, match=r"^must be server or client$"):
        parse("cookie")


@pytest.mark.parametrize(
    "name",
    [
        "alice.example@example.com",
        "+14155550123",
        "".join(chr(0xFF10 + int(d)) for d in "4155550123"),
    ],
)
def test_a_bidder_name_that_could_be_dii_is_refused(name: str) -> None:
    # Logged with every auction and a /metrics label: an account's name rule, not repeated.
    with pytest.raises(ConfigError, match="bidder name") as refused:
        parse_bidder(f"{name}=dsp.internal:50051")
    assert "example.com" not in str(refused.value) and "4155550123" not in str(refused.value)
    assert parse_bidder(" Acme DSP =dsp.internal:50051").name == "Acme DSP"
