"""The decrypting SSP's and DSP's /metrics count the tokens they checked by verdict, a token
naming a key they do not hold (a site not sharing with them) apart from a forged one: the SSP's
answer says DROPPED_INVALID for both. Real servers, real keys and tokens, a real scrape."""

from __future__ import annotations

import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from bidstream.decryptor.checker import Verdict
from ssp_svc.bid_request import Disposition, Impression, build_bid_request
from svc_common import metrics
from svc_common.grpc_server import Served
from tests.integration.ssp.conftest import Stack
from tests.unit.ssp.support import DOMAIN, make_key, mint
from uid2.ssp.v1 import openrtb_pb2_grpc, ssp_pb2


def _verdicts(served: Served, service: str) -> dict[str, float]:
    server = metrics.start("127.0.0.1:0", service)
    try:
        server.count(served.counts)
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    finally:
        server.stop()
    return {
        s.labels["verdict"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "uid2_decryptor_token_verdicts"
        for s in family.samples
        if s.name == "uid2_decryptor_token_verdicts_total" and s.labels["service"] == service
    }


def test_ssp_and_dsp_count_verdicts_from_zero_keys_not_held_apart(fast_stack: Stack) -> None:
    s = fast_stack
    zero = {v.value: 0.0 for v in Verdict}
    assert _verdicts(s.ssp, "ssp") == zero  # every verdict there from the start: alerts see 0
    assert _verdicts(s.dsps[0], "dsp") == zero
    # Site 43 does not share with us: its site key (below our highest id: no early fetch).
    unshared = mint(s.keys, site_key=make_key(150, 11, 43, now=s.keys.now_s()))
    assert s.submit(unshared).token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_INVALID
    assert s.submit("A4" + "Q" * 216).token_disposition == (
        ssp_pb2.TOKEN_DISPOSITION_DROPPED_INVALID
    )
    assert s.submit(mint(s.keys)).token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID
    ssp = _verdicts(s.ssp, "ssp")
    assert ssp == {**zero, "VALID": 1.0, "INVALID": 1.0, "KEY_NOT_HELD": 1.0}
    # The SSP sent only the valid token on; a bid request straight to the DSP brings the other.
    channel = grpc.insecure_channel(f"127.0.0.1:{s.dsps[0].port}")
    try:
        imp = Impression("p", "P", DOMAIN, "", "slot", 0.5, unshared)
        request = build_bid_request("auc-1", imp, Disposition.PASSED_THROUGH, 100)
        response = openrtb_pb2_grpc.BidderServiceStub(channel).Bid(request, timeout=5)
        assert response.seatbid[0].bid[0].crid == "alpha-contextual"
    finally:
        channel.close()
    assert _verdicts(s.dsps[0], "dsp") == {**zero, "VALID": 1.0, "KEY_NOT_HELD": 1.0}
