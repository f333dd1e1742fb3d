"""The real thing: operator, SSP and two sample bidders (one slow) as processes from their
console scripts, on free loopback ports. Tokens come from the operator (GenerateToken) and from
the official SDK's generator with the operator's own keys (GetBidstreamKeys)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from uid2_client import AdvertisingTokenVersion, IdentityScope
from uid2_client.client_type import ClientType
from uid2_client.encryption import decrypt_token
from uid2_client.refresh_keys_util import parse_keys_json
from uid2_client.uid2_token_generator import UID2TokenGenerator

from bidstream.key_json import key_container_dict
from demo.page import b64_sha256, page_request, post_page_request
from tests.support.procs import ServiceProcess, run_cli, wait_until
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc
from uid2.ssp.v1 import ssp_pb2, ssp_pb2_grpc

pytestmark = pytest.mark.slow

PUB_SITE = 42
DOMAIN = "news.example.com"
VALID = ssp_pb2.TOKEN_DISPOSITION_VALID


def _cli(*args: str) -> dict[str, Any]:
    done = run_cli(list(args))
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    return out


@dataclass
class World:
    op_dir: Path
    operator: ServiceProcess
    ssp: ServiceProcess
    dsps: list[ServiceProcess]
    op_stub: operator_pb2_grpc.OperatorServiceStub
    ssp_stub: ssp_pb2_grpc.SspServiceStub
    keys: dict[str, str]
    issued: list[str]

    def op(self, method: str, request: Any, role: str) -> Any:
        return getattr(self.op_stub, method)(
            request, metadata=(("authorization", f"Bearer {self.keys[role]}"),), timeout=5
        )

    def token(self, email: str | None = None) -> str:
        r = self.op(
            "GenerateToken",
            operator_pb2.GenerateTokenRequest(
                dii=operator_pb2.Dii(email=email or f"{uuid.uuid4().hex}@example.com"),
                privacy_settings=operator_pb2.PrivacySettings(transparency_notice_accepted=True),
            ),
            "generator",
        )
        assert r.status == operator_pb2.GENERATE_TOKEN_STATUS_SUCCESS
        self.issued.append(r.identity.advertising_token)
        return str(r.identity.advertising_token)

    def submit(self, token: str) -> Any:
        return self.ssp_stub.SubmitImpression(
            ssp_pb2.SubmitImpressionRequest(
                page_domain=DOMAIN, placement_id="top", floor_price=0.5, advertising_token=token
            ),
            metadata=(("authorization", f"Bearer {self.keys['publisher']}"),),
            timeout=5,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    op_dir = tmp_path_factory.mktemp("operator")
    ssp_dir = tmp_path_factory.mktemp("ssp")
    _cli("uid2-operator", "init", "--data-dir", str(op_dir))
    _cli("uid2-operator", "site", "add", "--data-dir", str(op_dir), "--site-id", str(PUB_SITE),
         "--name", "news", "--domain", "example.com")  # fmt: skip
    keys = {}
    for name, site, roles in (
        ("generator", PUB_SITE, "GENERATOR,OPTOUT"),
        ("ssp_reader", 100, "ID_READER"),
        ("dsp_reader", 101, "ID_READER"),
    ):
        added = _cli("uid2-operator", "client", "add", "--data-dir", str(op_dir),
                     "--site-id", str(site), "--name", name, "--roles", roles)  # fmt: skip
        keys[name] = added["api_key"]
    keys["publisher"] = _cli("uid2-ssp", "publisher", "add", "--data-dir", str(ssp_dir),
                             "--name", "news", "--domain", "example.com")["api_key"]  # fmt: skip
    procs: list[ServiceProcess] = []
    try:
        operator = ServiceProcess(
            ["uid2-operator", "serve", "--data-dir", str(op_dir), "--listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0"]
        ).wait_ready()  # fmt: skip
        procs.append(operator)
        alpha = ServiceProcess(
            ["uid2-dsp", "serve", "--listen", "127.0.0.1:0", "--name", "alpha",
             "--operator", operator.address, "--operator-api-key", keys["dsp_reader"]]
        ).wait_ready()  # fmt: skip
        procs.append(alpha)
        slow = ServiceProcess(
            ["uid2-dsp", "serve", "--listen", "127.0.0.1:0", "--name", "slow", "--mode", "slow",
             "--delay-ms", "500", "--base-price", "90"]
        ).wait_ready()  # fmt: skip
        procs.append(slow)
        ssp = ServiceProcess(
            ["uid2-ssp", "serve", "--data-dir", str(ssp_dir), "--listen", "127.0.0.1:0",
             "--operator", operator.address, "--operator-api-key", keys["ssp_reader"],
             "--bidder", f"alpha={alpha.address}", "--bidder", f"slow={slow.address}",
             "--tmax-ms", "150"]
        ).wait_ready()  # fmt: skip
        procs.append(ssp)
        op_channel = grpc.insecure_channel(operator.address)
        ssp_channel = grpc.insecure_channel(ssp.address)
        world = World(
            op_dir,
            operator,
            ssp,
            [alpha, slow],
            operator_pb2_grpc.OperatorServiceStub(op_channel),
            ssp_pb2_grpc.SspServiceStub(ssp_channel),
            keys,
            [],
        )
        yield world
        op_channel.close()
        ssp_channel.close()
        for p in reversed(procs):
            assert p.terminate() == 0
        for p in (ssp, alpha, slow):
            text = p.log_text()
            assert keys["ssp_reader"] not in text and keys["publisher"] not in text
            assert keys["dsp_reader"] not in text
            assert not any(t in text for t in world.issued)  # no token in any log line
    finally:
        for p in procs:
            p.kill()


def test_operator_token_travels_unchanged(world: World) -> None:
    token = world.token()
    stream = world.ssp_stub.StreamBidRequests(
        ssp_pb2.StreamBidRequestsRequest(site_domain=DOMAIN),
        metadata=(("authorization", f"Bearer {world.keys['publisher']}"),),
    )
    captured: list[Any] = []
    reader = threading.Thread(target=lambda: captured.append(next(stream)), daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    responses = []
    while not captured and time.monotonic() < deadline:
        responses.append(world.submit(token))
        time.sleep(0.05)
    assert captured, "no bid request captured"
    r = responses[-1]
    assert r.token_disposition == VALID
    assert r.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
    assert r.winning_bid.bidder == "alpha"  # slow (500 ms > tmax) is left out
    assert r.winning_bid.price == 2.5  # alpha decrypted it: identified bonus
    eids = captured[0].bid_request.user.eids
    assert [(e.source, [(u.id, u.atype) for u in e.uids]) for e in eids] == [
        ("uidapi.com", [(token, 3)])
    ]
    stream.cancel()


def _client_side_token(world: World, site_id: int, origin: str) -> str:
    """A token a page on `origin` generated itself (POST /v2/token/client-generate)."""
    pair = _cli("uid2-operator", "keypair", "add", "--data-dir", str(world.op_dir),
                "--site-id", str(site_id))  # fmt: skip
    http_port = next(e for e in world.operator.events if e.get("event") == "serving")["http_port"]
    page = page_request(
        pair["public_key"], pair["subscription_id"], {"email_hash": b64_sha256("page@example.com")}
    )
    base = f"http://127.0.0.1:{http_port}"
    answers: list[Any] = []

    def answered() -> bool:  # the new key pair reaches the serving operator within a second
        status, answer = post_page_request(base, page, origin)
        answers.append(answer)
        return status == 200

    assert wait_until(answered, 2.0), answers[-1]
    token = str(answers[-1]["body"]["advertising_token"])
    world.issued.append(token)
    return token


def test_a_client_side_token_is_valid_on_its_sites_pages_only(world: World) -> None:
    # Site 42 registered example.com; its page on news.example.com generated the token, and
    # both the SSP and the decrypting bidder accept it there.
    token = _client_side_token(world, PUB_SITE, f"https://{DOMAIN}")
    r = world.submit(token)
    assert r.token_disposition == VALID
    assert r.winning_bid.bidder == "alpha" and r.winning_bid.price == 2.5
    # Another site's page token, carried on site 42's page: dropped, as a token lifted from
    # one site and replayed on another must be.
    _cli("uid2-operator", "site", "add", "--data-dir", str(world.op_dir), "--site-id", "43",
         "--name", "other", "--domain", "other.test")  # fmt: skip
    lifted = _client_side_token(world, 43, "https://www.other.test")
    dropped = world.submit(lifted)
    assert dropped.token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_INVALID


def _sdk_keys(world: World) -> tuple[Any, Any]:
    container = world.op(
        "GetBidstreamKeys", operator_pb2.GetBidstreamKeysRequest(), "ssp_reader"
    ).key_container
    keys = parse_keys_json(key_container_dict(container)).keys
    now = dt.datetime.now(tz=dt.UTC)
    master = keys.get_master_key(now)
    site = keys.get_active_site_key(PUB_SITE, now)
    assert master is not None and site is not None
    return master, site


@pytest.mark.parametrize(
    "version",
    [
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V2,
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V3,
        AdvertisingTokenVersion.ADVERTISING_TOKEN_V4,
    ],
)
def test_sdk_minted_tokens_with_the_operators_keys_are_accepted(
    world: World, version: AdvertisingTokenVersion
) -> None:
    master, site = _sdk_keys(world)
    raw = base64.b64encode(os.urandom(32)).decode()
    token = UID2TokenGenerator.generate_uid_token(
        raw, master, PUB_SITE, site, IdentityScope.UID2.value, version
    )
    assert world.submit(token).token_disposition == VALID
    now = dt.datetime.now(tz=dt.UTC)
    expired = UID2TokenGenerator.generate_uid_token(
        raw, master, PUB_SITE, site, IdentityScope.UID2.value, version,
        token_generated=now - dt.timedelta(hours=2), token_expiry=now - dt.timedelta(hours=1),
    )  # fmt: skip
    r = world.submit(expired)
    assert r.token_disposition == ssp_pb2.TOKEN_DISPOSITION_DROPPED_EXPIRED


def test_opted_out_token_stops_appearing_within_one_second(world: World) -> None:
    email = f"{uuid.uuid4().hex}@example.com"
    token = world.token(email)
    assert world.submit(token).token_disposition == VALID
    world.op("OptOut", operator_pb2.OptOutRequest(dii=operator_pb2.Dii(email=email)), "generator")
    t0 = time.monotonic()
    dropped = ssp_pb2.TOKEN_DISPOSITION_DROPPED_OPTOUT
    assert wait_until(lambda: world.submit(token).token_disposition == dropped, 1.0, 0.01)
    assert time.monotonic() - t0 < 1.0


def _key_container(world: World) -> dict[str, Any]:
    container = world.op(
        "GetBidstreamKeys", operator_pb2.GetBidstreamKeysRequest(), "ssp_reader"
    ).key_container
    return key_container_dict(container)


def _under_keys(token: str, keys: Any) -> bool:
    """Whether the official SDK decrypts `token` with `keys` alone: both its master key and its
    site key are among them."""
    now = dt.datetime.now(tz=dt.UTC)
    return bool(decrypt_token(token, keys, DOMAIN, ClientType.BIDSTREAM, now).success)


def test_key_rotation_during_traffic_gives_zero_decrypt_failures(world: World) -> None:
    submitted: list[str] = []  # tokens the SSP answered VALID, in order
    failures: list[int] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            token = world.token()
            r = world.submit(token)
            if r.token_disposition == VALID:
                submitted.append(token)
            else:
                failures.append(r.token_disposition)

    before = {k["id"] for k in _key_container(world)["keys"]}
    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        assert wait_until(lambda: len(submitted) >= 10, 10)  # traffic under the old keys
        under_old_keys = list(submitted)
        # Keys that activate as soon as allowed: tokens name them long before the SSP's
        # scheduled (hourly) key refresh, so it must fetch them when it first meets them.
        _cli("uid2-operator", "keys", "rotate", "--data-dir", str(world.op_dir),
             "--activation-delay", "2")  # fmt: skip
        body: dict[str, Any] = {}

        def published() -> bool:
            body.update(_key_container(world))
            body["keys"] = [k for k in body["keys"] if k["id"] not in before]
            return bool(body["keys"])

        assert wait_until(published, 5), "the rotated keys were never published"
        # Only the keys the rotation added: a token decrypts with these alone only if the
        # operator minted it under the new master key and the new site key.
        new_only = parse_keys_json(body).keys
        assert not any(_under_keys(t, new_only) for t in under_old_keys)  # the check can tell
        scanned, under_new = [0], [0]

        def tokens_under_new_keys() -> int:
            batch = submitted[scanned[0] :]
            scanned[0] += len(batch)
            under_new[0] += sum(_under_keys(t, new_only) for t in batch)
            return under_new[0]

        # Past the 2 s activation, tokens under the new keys must come back VALID.
        assert wait_until(lambda: tokens_under_new_keys() >= 10, 15), "no token used new keys"
    finally:
        done.set()
        for w in workers:
            w.join()
    assert failures == []


def test_auctions_go_on_with_the_operator_stopped(world: World) -> None:
    token = world.token()
    assert world.operator.terminate() == 0
    for _ in range(5):
        r = world.submit(token)
        assert r.token_disposition == VALID  # last good keys
        assert r.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED
