"""`--metrics-listen` on every service (here through each one's UID2_<SVC>_METRICS_LISTEN), with
the whole workflow running: each process serves Prometheus /metrics counting the calls it
answered by method and code, the decrypting ones their keys' and opt-outs' state, and no scrape
names a user, a token or a key."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo.stack import PUBLISHER_DOMAIN, Lifetimes, Stack, bearer
from tests.support.bad_stores import one_error_line
from tests.support.procs import run_cli, wait_until
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2

pytestmark = pytest.mark.slow

SERVICES = ("OPERATOR", "PUBLISHER", "SSP", "DSP")
EMAIL = "metrics.user@example.com"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as mp:
        for svc in SERVICES:
            mp.setenv(f"UID2_{svc}_METRICS_LISTEN", "127.0.0.1:0")
        s = Stack(tmp_path_factory.mktemp("metrics"), Lifetimes())
        try:
            s.provision()
            s.start_all()
            yield s
        finally:
            s.stop_all()


def _scrape(stack: Stack, name: str) -> tuple[str, dict[tuple[str, str], float]]:
    """The process's /metrics text and its uid2_rpc_calls_total by (method, code)."""
    serving = next(e for e in stack.procs[name].events if e.get("event") == "serving")
    url = f"http://127.0.0.1:{serving['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    calls = {
        (s.labels["method"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "uid2_rpc_calls"
        for s in family.samples
        if s.name == "uid2_rpc_calls_total"
    }
    return text, calls


def test_every_service_counts_the_calls_it_answered_and_names_no_one(stack: Stack) -> None:
    pub = stack.publisher()
    consent = operator_pb2.PrivacySettings(transparency_notice_accepted=True)
    login = pub.Login(
        publisher_pb2.LoginRequest(user_id="m1", email=EMAIL, privacy_settings=consent)
    )
    token = pub.GetAdvertisingToken(publisher_pb2.GetAdvertisingTokenRequest(user_id="m1"))
    for _ in range(3):
        pub.ServeAd(
            publisher_pb2.ServeAdRequest(
                user_id="m1", placement_id="top", page_domain=PUBLISHER_DOMAIN, floor_price=0.1
            )
        )
    assert login.status == publisher_pb2.LOGIN_STATUS_SUCCESS and token.advertising_token

    expected = {
        "operator": ("/uid2.operator.v1.OperatorService/GenerateToken", 1),
        "publisher": ("/uid2.publisher.v1.PublisherService/ServeAd", 3),
        "ssp": ("/uid2.ssp.v1.SspService/SubmitImpression", 3),
        "dsp": ("/uid2.ssp.v1.BidderService/Bid", 3),
    }
    secrets = [EMAIL, token.advertising_token, stack.creds.publisher["api_key"]]
    for name, (method, count) in expected.items():
        text, calls = _scrape(stack, name)
        assert calls.get((method, "OK"), 0) >= count, (name, calls)
        assert "process_resident_memory_bytes" in text
        assert not [s for s in secrets if s in text], name
    # What each bidder answered: the auctions' outcome alone does not tell a bidder down.
    outcomes = {
        (s.labels["bidder"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(_scrape(stack, "ssp")[0])
        if family.name == "uid2_ssp_bidder_outcomes"
        for s in family.samples
        if s.name == "uid2_ssp_bidder_outcomes_total"
    }
    assert outcomes[("example-dsp", "bid")] >= 3, outcomes
    assert outcomes[("example-dsp", "error")] == 0


def test_methods_and_paths_a_service_does_not_have_add_no_labels(stack: Stack) -> None:
    channel = grpc.insecure_channel(stack.procs["operator"].address)
    try:
        nope = channel.unary_unary("/uid2.operator.v1.OperatorService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as caught:
            nope(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()
    serving = next(e for e in stack.procs["operator"].events if e.get("event") == "serving")
    for path in ("/no/such/path", "/v2/token/generate/extra"):
        url = f"http://127.0.0.1:{serving['http_port']}{path}"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(url, data=b"x"), timeout=5)
    text, calls = _scrape(stack, "operator")
    assert "NoSuchMethod" not in text and "/no/such" not in text and "extra" not in text
    assert calls.get(("<unknown>", "404"), 0) >= 2


def _gauges(text: str) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("uid2_decryptor_")
        for s in family.samples
    }


def test_the_decrypting_services_show_their_keys_and_opt_outs(stack: Stack) -> None:
    """What goes stale without an error on the bid path: the keys (an old set cannot decrypt
    new tokens) and the opt-out stream (broken, it lets opted-out users through)."""
    for name in ("ssp", "dsp"):
        gauges = _gauges(_scrape(stack, name)[0])
        assert 0 <= gauges["uid2_decryptor_keys_age_seconds"] < 600, (name, gauges)
        assert gauges["uid2_decryptor_key_refresh_failures"] == 0
        assert gauges["uid2_decryptor_optouts_loaded"] == 1
        assert gauges["uid2_decryptor_optout_stream_connected"] == 1
        assert gauges["uid2_decryptor_optouts"] >= 0
    # Services that decrypt nothing show no such gauges.
    assert _gauges(_scrape(stack, "operator")[0]) == {}


def _operator_gauges(stack: Stack) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(_scrape(stack, "operator")[0])
        if family.name.startswith("uid2_operator_")
        for s in family.samples
    }


def test_the_operator_shows_its_opt_outs_and_how_fresh_its_state_is(stack: Stack) -> None:
    before = _operator_gauges(stack)
    stack.operator().OptOut(
        operator_pb2.OptOutRequest(dii=operator_pb2.Dii(email="gone.metrics@example.com")),
        metadata=bearer(stack.creds.optout_portal["api_key"]),
    )
    after = _operator_gauges(stack)
    assert after["uid2_operator_optouts"] == before["uid2_operator_optouts"] + 1
    # A sync that keeps failing leaves a process serving old state with no error on any call.
    assert 0 <= after["uid2_operator_sync_age_seconds"] < 5, after
    assert after["uid2_operator_sync_failures"] == 0


def test_the_operator_shows_when_keys_and_salts_need_rotating(stack: Stack) -> None:
    """Nothing fails while nobody rotates keys or salts, until the last key expires."""
    gauges = _operator_gauges(stack)
    # The stack ran `init` moments ago: a new master key, a year of keys ahead.
    assert 0 <= gauges["uid2_operator_master_key_newest_age_seconds"] < 600, gauges
    year_s = 365 * 86_400
    assert year_s - 600 < gauges["uid2_operator_token_keys_run_out_in_seconds"] <= year_s
    # The first of the new salts comes due within seconds of `init` (2^20 over a year).
    assert -86_400 < gauges["uid2_operator_salts_refresh_overdue_seconds"] < 600


def test_a_metrics_port_in_use_is_one_line_and_exit_2(stack: Stack, tmp_path: Path) -> None:
    serving = next(e for e in stack.procs["dsp"].events if e.get("event") == "serving")
    taken = f"127.0.0.1:{serving['metrics_port']}"
    r = run_cli(["uid2-dsp", "serve", "--listen", "127.0.0.1:0", "--name", "x",
                 "--metrics-listen", taken])  # fmt: skip
    assert r.returncode == 2
    line = one_error_line(r.stderr, "uid2-dsp: error: ")
    assert f"cannot listen on {taken} (metrics)" in line and "in use" in line
    assert "[Errno" not in line  # as the publisher and operator say it (misconfiguration review)


def test_the_publisher_shows_whether_its_refresher_holds_back(stack: Stack) -> None:
    text = _scrape(stack, "publisher")[0]
    gauges = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("uid2_publisher_")
        for s in family.samples
    }
    assert gauges["uid2_publisher_refresh_paused_by_store"] == 0
    assert gauges["uid2_publisher_refresh_circuit_open"] == 0
    assert gauges["uid2_publisher_refresh_in_flight"] >= 0
    assert gauges["uid2_publisher_unrecorded_optouts"] == 0


def test_an_opt_out_stream_that_breaks_shows_at_once(stack: Stack) -> None:
    """Last in this module: it stops the operator."""
    stack.stop("operator")

    def disconnected() -> bool:
        gauges = _gauges(_scrape(stack, "ssp")[0])
        return gauges["uid2_decryptor_optout_stream_connected"] == 0

    assert wait_until(disconnected, 10.0)


def test_a_client_side_publisher_shows_its_unrecorded_opt_outs_too(stack: Stack) -> None:
    """No background refresher in client mode, but opt-outs its store refused are still held
    (and recorded after the next write), and callers' calls still wait on the operator: the
    gauges are the publisher's, in every mode."""
    text = _scrape(stack, "publisher-web")[0]
    gauges = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("uid2_publisher_")
        for s in family.samples
    }
    assert gauges == {
        "uid2_publisher_unrecorded_optouts": 0,
        "uid2_publisher_operator_calls_waiting": 0,
        "uid2_publisher_operator_calls_shed": 0,
        "uid2_publisher_ssp_calls_waiting": 0,
        "uid2_publisher_ssp_calls_shed": 0,
    }


def test_every_service_says_its_health_on_the_metrics_port(stack: Stack) -> None:
    # A plain-HTTP probe (Kubernetes' httpGet) of each running process: SERVING, as its gRPC
    # health says.
    for name in stack.procs:
        serving = next(e for e in stack.procs[name].events if e.get("event") == "serving")
        url = f"http://127.0.0.1:{serving['metrics_port']}/healthz"
        with urllib.request.urlopen(url, timeout=5) as reply:  # the stack's own port
            assert (name, reply.status, reply.read()) == (name, 200, b"SERVING\n")
