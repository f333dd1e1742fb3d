"""The publisher's log lines, on every path a user's call takes (a login answered SUCCESS,
OPTOUT or INSUFFICIENT_CONSENT, a site opt-out, a refresh, an impression, a logout), carry no
DII, no hash of it, no token and no refresh token."""

from __future__ import annotations

import base64
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from publisher_svc.model import DiiKind, HashedDii, PrivacySettings
from publisher_svc.publisher import Publisher
from publisher_svc.results import LoginStatus
from publisher_svc.store import SqliteStore
from svc_common.clock import ManualClock
from tests.unit.publisher.fakes import HOUR, FakeOperator, FakeSsp
from uid2_crypto.identity import identity_hash

T0 = 1_700_000_000_000
OK = PrivacySettings(True, "")
EMAILS = {
    "ok": "kept.user@example.com",
    "optout": "gone.user@example.com",
    "consent": "noconsent.user@example.com",
}
# What the operator sees of each: the normalised email's SHA-256.
HASHES = {k: base64.b64encode(identity_hash("email", e)[1]).decode() for k, e in EMAILS.items()}


def _values(logs: list[MutableMapping[str, Any]]) -> str:
    return "\n".join(f"{k}={v!r}" for entry in logs for k, v in entry.items())


def test_no_dii_hash_or_token_in_any_log_line(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    op = FakeOperator(clock)
    op.optout_keys.add(HashedDii(DiiKind.EMAIL, HASHES["optout"]).key)
    store = SqliteStore(tmp_path)
    pub = Publisher(store=store, operator=op, ssp=FakeSsp(), clock=clock)
    try:
        with capture_logs() as logs:
            assert pub.login("u-ok", EMAILS["ok"], None, OK).status is LoginStatus.SUCCESS
            assert pub.login("u-out", EMAILS["optout"], None, OK).status is LoginStatus.OPTOUT
            refused = pub.login("u-nc", EMAILS["consent"], None, PrivacySettings(False, ""))
            assert refused.status is LoginStatus.INSUFFICIENT_CONSENT
            issued = pub.get_advertising_token("u-ok").advertising_token
            clock.advance(2 * HOUR)  # due: refreshed on the next use
            refreshed = pub.get_advertising_token("u-ok")
            assert refreshed.refreshed
            pub.serve_ad(
                user_id="u-ok",
                cookie_value=None,
                placement_id="p1",
                page_domain="example.com",
                floor_price=0.1,
            )
            pub.set_site_optout("u-ok", True)
            pub.logout("u-ok")
        text = _values(logs)
        assert "login_optout" in text and "login_insufficient_consent" in text  # paths taken
        secrets = [*EMAILS.values(), *HASHES.values(), issued, refreshed.advertising_token]
        secrets += [rt for rt in op.refresh_calls]
        for secret in secrets:
            assert secret and secret not in text, secret
        for digest in HASHES.values():  # nor a part of a hash
            assert digest[:12] not in text
    finally:
        pub.close()
        store.close()
