"""A value given to a flag or an admin command is repeated in its error message only when it
cannot be personal data or a secret: a service that fails to start writes that message to its
log."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from operator_svc import cli
from svc_common.sensitive import NOT_SHOWN, shown
from tests.support.bad_stores import one_error_line

_SHA = hashlib.sha256(b"alice@example.com").digest()
_KEY = "UID2-C-36dab4e6c2a5-1gV3VcIhUOFkHNyOVUc20dyDmZoM_Zy5JCDOH2ovbp0"


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.com",
        "+12065557781",
        "12065557781",
        "+1 (206) 555-7781",
        base64.b64encode(_SHA).decode(),
        _SHA.hex(),
        _KEY,
        _KEY[1:40],
        base64.b64encode(b"\x01" * 32).decode(),  # a client secret
    ],
)
def test_personal_data_and_secrets_are_not_repeated(value: str) -> None:
    assert shown(value) == NOT_SHOWN


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "news.example.com/x", "2026-11-29"])
def test_typos_are_repeated(value: str) -> None:
    assert shown(value) == repr(value)


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1:99999", "my-uid2-operator-1234567890.us-east-1.elb.amazonaws.com:4430000"],
)
def test_addresses_are_repeated_though_they_hold_long_numbers(address: str) -> None:
    # As HOST:PORT values (numbers=False): an IP or a load balancer's name is no phone number.
    assert shown(address, numbers=False) == repr(address)
    assert shown("alice@example.com:443", numbers=False) == NOT_SHOWN


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["site", "add", "--site-id", "7", "--name", "n", "--domain", "alice@example.com"],
         "alice@example.com"),
        (["client", "add", "--site-id", "7", "--name", "n", "--roles", _KEY], _KEY),
        (["serve", "--listen", _KEY], _KEY),
        (["serve", "--listen", "127.0.0.1:0", "--log-level", _KEY], _KEY),
        (["serve", "--listen", "127.0.0.1:0", "--token-lifetime", "+12065557781"], "12065557781"),
        (["serve", "--listen", "127.0.0.1:0", "--rotate-keys-every", "12065557781"], "12065557781"),
        (["serve", "--listen", "127.0.0.1:0", "--rotate-salts-daily-fraction", "12065557781"],
         "12065557781"),
        (["serve", "--listen", "127.0.0.1:0", "--refresh-from", "12065557781"], "12065557781"),
    ],
)  # fmt: skip
def test_a_cli_error_does_not_repeat_them(
    argv: list[str], value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["init", "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    rc = cli.main([*argv, "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    line = one_error_line(err, "uid2-operator: error: ")
    assert NOT_SHOWN in line, line  # refused for the value itself, not for something else
    assert value not in line and value[:12] not in line
