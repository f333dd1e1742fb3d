"""`uid2-operator sharing`: which sites decrypt a site's tokens, with uid2-client 2.9.0's
SharingClient as the oracle. Reference §5, as the official operator: a site with no list is
decrypted by every ID_READER; a list names exactly the sites that decrypt, whatever their role.
Security review: the list could only be set in the store by hand, so sharing between two
SHARERs could not be set up at all."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from uid2_client import DecryptionStatus, SharingClient

from operator_svc import cli
from tests.integration.operator.conftest import add_client, init_dir
from tests.integration.operator_http.conftest import HttpLive, start
from tests.support.procs import wait_until


def _sharing(live: HttpLive, name: str) -> SharingClient:
    c = live.clients[name]
    return SharingClient(live.base_url, c.api_key, c.secret)


def _status(live: HttpLive, name: str, token: str) -> DecryptionStatus:
    """What `name` gets decrypting `token` with keys fetched now."""
    client = _sharing(live, name)
    assert client.refresh().success
    return client.decrypt_token_into_raw_uid(token).status


def _sharing_cli(*args: str) -> int:
    return cli.main(["sharing", *args])


def test_a_site_shares_its_tokens_with_the_sites_it_lists_and_only_them(tmp_path: Path) -> None:
    live = start(tmp_path)
    try:
        live.clients["a"] = add_client(tmp_path, 201, "sharer-a", ["SHARER"])
        live.clients["b"] = add_client(tmp_path, 202, "sharer-b", ["SHARER"])
        for name in ("a", "b"):  # added after the start: the operator syncs them in
            assert wait_until(lambda name=name: _sharing(live, name).refresh().success, 5)
        raw = base64.b64encode(hashlib.sha256(b"shared-person").digest()).decode()
        sealed = _sharing(live, "a")
        assert sealed.refresh().success
        token = sealed.encrypt_raw_uid_into_token(raw).encrypted_data
        assert _status(live, "a", token) is DecryptionStatus.SUCCESS
        assert _status(live, "b", token) is DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
        assert _status(live, "reader", token) is DecryptionStatus.SUCCESS  # no list: ID_READERs

        d = str(tmp_path)
        assert (
            _sharing_cli("allow", "--data-dir", d, "--site-id", "201", "--with-site-id", "202") == 0
        )
        assert wait_until(lambda: _status(live, "b", token) is DecryptionStatus.SUCCESS, 5)
        # A list leaves out every ID_READER it does not name, as the official operator's does.
        assert _status(live, "reader", token) is DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
        assert _status(live, "all", token) is DecryptionStatus.NOT_AUTHORIZED_FOR_KEY

        assert (
            _sharing_cli("revoke", "--data-dir", d, "--site-id", "201", "--with-site-id", "202")
            == 0
        )
        assert wait_until(lambda: _status(live, "b", token) is not DecryptionStatus.SUCCESS, 5)
        assert _status(live, "reader", token) is DecryptionStatus.NOT_AUTHORIZED_FOR_KEY  # []

        assert _sharing_cli("open", "--data-dir", d, "--site-id", "201") == 0
        assert wait_until(lambda: _status(live, "reader", token) is DecryptionStatus.SUCCESS, 5)
        assert _status(live, "b", token) is DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    finally:
        live.channel.close()
        live.served.stop(1.0)


def test_sharing_mistakes_are_one_line_and_exit_2_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_dir(tmp_path)
    add_client(tmp_path, 201, "sharer-a", ["SHARER"])
    d = str(tmp_path)
    for args, said in (
        (("allow", "--site-id", "201", "--with-site-id", "201"), "its own tokens"),
        (("allow", "--site-id", "201", "--with-site-id", "299"), "no site 299"),
        (("allow", "--site-id", "299", "--with-site-id", "201"), "no site 299"),
        (("open", "--site-id", "2"), "fallback"),
        (("allow", "--site-id", "201", "--with-site-id", "2"), "fallback site, no participant"),
        # Diff review: it started an empty list, leaving out every ID_READER.
        (("revoke", "--site-id", "201", "--with-site-id", "202"), "site 201 has no list"),
        (("revoke", "--site-id", "201", "--with-site-id", "0x1"), "not an integer"),
    ):
        capsys.readouterr()
        assert _sharing_cli(args[0], "--data-dir", d, *args[1:]) == 2, args
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert _sharing_cli("list", "--data-dir", d) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed == [{"site_id": 201, "allowed_sites": None}]
