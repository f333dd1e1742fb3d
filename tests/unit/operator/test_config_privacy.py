from __future__ import annotations

import base64
from pathlib import Path

import pytest

from operator_svc.config import ConfigError, OperatorConfig
from operator_svc.domain.privacy import Privacy, consent_allows_token, tcf_grants_purpose_1
from svc_common.errors import ServiceError


def test_production_defaults() -> None:
    c = OperatorConfig(data_dir=Path("/x"))
    assert (c.token_lifetime_s, c.refresh_lifetime_s, c.refresh_from_s) == (
        3 * 86400,
        30 * 86400,
        3600,
    )
    assert c.bidstream_lifetime_s == c.token_lifetime_s
    assert c.http_listen is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"refresh_from_s": 7200, "token_lifetime_s": 3600},
        {"token_lifetime_s": 10, "refresh_lifetime_s": 5, "refresh_from_s": 1},
        {"token_lifetime_s": 0},
        {"token_lifetime_s": 10**20, "refresh_lifetime_s": 10**21},
        {"allow_clock_skew_s": 10**20},
        {"listen": "nohost"},
        {"listen": "h:99999"},
        {"identity_scope": "XYZ"},
        {"max_bidstream_lifetime_s": 10},
        {"sync_interval_s": 0},
        {"sync_interval_s": 1.5},  # other processes' writes must be used within 1 s
    ],
)
def test_invalid_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        OperatorConfig(data_dir=Path("/x"), **kwargs)  # type: ignore[arg-type]  # deliberately wrong or loosely typed fields


def _tcf(purpose1: bool, version: int = 2) -> str:
    bits = [0] * 200
    for i in range(6):
        bits[i] = (version >> (5 - i)) & 1
    bits[152] = int(purpose1)
    data = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, 200, 8))
    return base64.urlsafe_b64encode(data).decode().rstrip("=") + ".YAAAAAAAAAA"


def test_tcf_purpose_one() -> None:
    assert tcf_grants_purpose_1(_tcf(True))
    assert not tcf_grants_purpose_1(_tcf(False))
    # A real-world TCF v2 string granting purpose 1.
    real = (
        "CPXxRfAPXxRfAAfKABENB-CgAP_AAH_AAAqIHJNd_X__bX9n-_7_6ft0eY1f9_r37uQzDhfNs-8F3L_W_LwX32E"
        "7NF36tq4KmR4ku1bBIQNtHMnUDUmxaolVrzHsak2cpyNKJ_BkknsZe2dYGF9Pn9lD-YKZ7_5_9_f52T_9_9_-3"
        "9z3_9f___dv_-__-vjf_599n_v9fV_78_Kf9______-____________8A"
    )
    assert tcf_grants_purpose_1(real)


@pytest.mark.parametrize("bad", ["!!!", "AAAA", _tcf(True, version=1), "a" * 9000])
def test_tcf_undecodable(bad: str) -> None:
    with pytest.raises(ServiceError) as exc:
        tcf_grants_purpose_1(bad)
    assert exc.value.reason == "INVALID_TCF_CONSENT_STRING"


def test_consent_rule() -> None:
    assert consent_allows_token(Privacy(True, ""))
    assert not consent_allows_token(Privacy(False, ""))
    assert consent_allows_token(Privacy(True, _tcf(True)))
    assert not consent_allows_token(Privacy(True, _tcf(False)))
    assert not consent_allows_token(Privacy(False, _tcf(True)))
