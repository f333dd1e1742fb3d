"""`make demo`: the UID2 publisher workflow, step by step, across real processes.

Starts the operator, a DSP bidder, the SSP and the publisher (twice: server-side and client-side
storage) on free loopback ports with SQLite in a temporary directory (`DATA_DIR=...`, new or
empty, keeps it),
walks the seed document's eight steps (and client-side token generation, where the page gets
the token itself), prints what happened, and stops everything — also on Ctrl-C. Tokens are shown
shortened; nothing secret is printed."""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc

from demo.page import b64_sha256, page_request, post_page_request
from demo.stack import (
    PUBLISHER_DOMAIN,
    Lifetimes,
    Stack,
    StackError,
    bearer,
    keep_data_dir,
    running_stack,
)
from svc_common.stop_signals import StopEvent
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2
from uid2.ssp.v1 import ssp_pb2

ALICE = ("alice", "Alice.Example@example.com")
BOB = ("bob", "bob@example.com")
CHARLIE = ("charlie", "+14155550123")
DANA = ("dana", "dana@example.com")
CONSENT = operator_pb2.PrivacySettings(transparency_notice_accepted=True)


# Ctrl-C and SIGTERM during the walk, as a flag the walk checks between its calls (the
# services' own lock-free StopEvent). Why not KeyboardInterrupt there: raised between two
# bytecodes of grpc's own code, it once left a grpc lock held (a context manager entered but
# never exited), and the demo then hung for good in Channel.close() with every service still
# running (seen in a loaded test run). `check_interrupt` raises it from the demo's code instead;
# every gRPC call has a deadline (demo.stack), so a check is never far off.
INTERRUPTS = StopEvent()


def check_interrupt() -> None:
    if INTERRUPTS.is_set():
        raise KeyboardInterrupt


def pause(seconds: float) -> None:
    """time.sleep that a Ctrl-C ends (the handler only sets a flag; a sleep would run on)."""
    if INTERRUPTS.wait(seconds):
        raise KeyboardInterrupt


def short(token: str) -> str:
    return f"{token[:10]}…{token[-4:]} ({len(token)} chars)" if token else "(none)"


def enum_name(enum: Any, value: int) -> str:
    name: str = enum.Name(value)
    return name.split("_STATUS_")[-1] if "_STATUS_" in name else name


class Printer:
    def heading(self, label: str, text: str) -> None:
        check_interrupt()
        print(f"\n[{label}] {text}", flush=True)

    def say(self, text: str) -> None:
        check_interrupt()
        print(f"    {text}", flush=True)


class BidStreamTap:
    """Subscribes to the SSP's bid-stream capture, as an analytics partner would."""

    def __init__(self, stack: Stack) -> None:
        self.requests: dict[str, Any] = {}
        self._call = stack.ssp().StreamBidRequests(
            ssp_pb2.StreamBidRequestsRequest(site_domain=PUBLISHER_DOMAIN),
            metadata=bearer(stack.creds.ssp_subscriber_key),
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._call:
                self.requests[item.bid_request.id] = item.bid_request
        except grpc.RpcError:
            return

    def wait_for(self, auction_id: str, timeout_s: float = 3.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while auction_id not in self.requests and time.monotonic() < deadline:
            pause(0.02)
        return self.requests.get(auction_id)

    def close(self) -> None:
        self._call.cancel()


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause(0.1)
    return predicate()


def describe_impression(p: Printer, resp: Any, tap: BidStreamTap, sender: str = "") -> None:
    """`resp`: the publisher's ServeAdResponse, or (with `sender`, who sent the token) the
    SSP's own SubmitImpressionResponse."""
    disposition = ssp_pb2.TokenDisposition.Name(resp.token_disposition)
    if sender:
        p.say(f"{sender} sent the impression to the SSP with the token")
    else:
        sent = "with" if resp.token_sent else "without"
        p.say(f"the publisher sent the impression to the SSP {sent} a UID2 token")
    captured = tap.wait_for(resp.auction_id)
    if captured is not None:
        eids = [
            f'{{source: "{e.source}", uids: [{{id: {short(u.id)}, atype: {u.atype}}}]}}'
            for e in captured.user.eids
            for u in e.uids
        ]
        p.say(f"bid request {captured.id[:8]}… user.eids = [{', '.join(eids)}]")
    p.say(f"SSP token check: {disposition}; bids received: {resp.bids_received}")
    if resp.outcome == ssp_pb2.AUCTION_OUTCOME_FILLED:
        w = resp.winning_bid
        p.say(f"auction: {w.bidder} wins at ${w.price:.2f} CPM (creative {w.creative_id})")
    else:
        p.say("auction: no fill")


def walk(stack: Stack) -> None:
    p = Printer()
    pub = stack.publisher("publisher")
    web = stack.publisher("publisher-web")
    op = stack.operator()
    tap = BidStreamTap(stack)
    try:
        _walk(p, stack, pub, web, op, tap)
    finally:
        tap.close()


def _walk(p: Printer, stack: Stack, pub: Any, web: Any, op: Any, tap: BidStreamTap) -> None:
    user, email = ALICE
    p.heading("step 1", f"A user ({user}) visits {PUBLISHER_DOMAIN}")
    p.heading("step 2", "The publisher explains the value exchange and asks them to log in")
    p.say("they log in and accept the transparency notice")

    p.heading("step 3", "The publisher sends the DII and privacy settings to the UID2 operator")
    login = pub.Login(
        publisher_pb2.LoginRequest(user_id=user, email=email, privacy_settings=CONSENT)
    )
    p.say("the email was normalised and SHA-256 hashed inside the publisher; only the hash and")
    p.say("the privacy settings (transparency notice accepted) went to the operator")
    p.say(f"login status: {enum_name(publisher_pb2.LoginStatus, login.status)}")

    p.heading("step 4", "The operator salts, hashes and encrypts, and returns a UID2 identity")
    first = pub.GetAdvertisingToken(publisher_pb2.GetAdvertisingTokenRequest(user_id=user))
    p.say(f"advertising token: {short(first.advertising_token)}")
    p.say(f"refresh due in {max(0, login.refresh_from - int(time.time() * 1000)) / 1000:.1f} s")

    p.heading("step 5", "The publisher stores the token")
    p.say(f"server side: in its mapping table, keyed by user id '{user}'")
    bob, bob_email = BOB
    bob_login = web.Login(
        publisher_pb2.LoginRequest(user_id=bob, email=bob_email, privacy_settings=CONSENT)
    )
    cookie = bob_login.cookie
    fields = ", ".join(json.loads(urllib.parse.unquote(cookie.value)))
    # The field names only: the value starts with the advertising token, shown shortened
    # everywhere else.
    p.say(
        f"client side, for a second user ({bob}): first-party cookie {cookie.name} = the "
        f"URL-encoded identity JSON ({fields}), expiring with the refresh token"
    )

    p.heading("step 6", "At the impression the publisher sends the token to the SSP, as received")
    ad = pub.ServeAd(
        publisher_pb2.ServeAdRequest(
            user_id=user, placement_id="top-banner", page_domain=PUBLISHER_DOMAIN, floor_price=0.5
        )
    )
    p.heading("step 7", "The SSP places a bid request carrying the token in the bid stream")
    describe_impression(p, ad, tap)
    bob_ad = web.ServeAd(
        publisher_pb2.ServeAdRequest(
            cookie_value=cookie.value,
            placement_id="sidebar",
            page_domain=PUBLISHER_DOMAIN,
            floor_price=0.5,
        )
    )
    p.say(f"{bob}'s impression (token from the cookie):")
    describe_impression(p, bob_ad, tap)

    client_side_ok = _client_side(p, stack, tap)

    p.heading("step 8", "The publisher refreshes the identity with the refresh token")
    wait_s = stack.lifetimes.refresh_from_s + 0.5
    p.say(
        f"waiting {wait_s:.1f} s for refresh_from to pass "
        "(the demo's operator uses short lifetimes)"
    )
    pause(wait_s)
    renewed = pub.GetAdvertisingToken(publisher_pb2.GetAdvertisingTokenRequest(user_id=user))
    changed = renewed.advertising_token != first.advertising_token
    p.say(
        f"status {enum_name(publisher_pb2.GetAdvertisingTokenStatus, renewed.status)}; "
        f"new token {short(renewed.advertising_token)}; "
        f"{'renewed' if changed else 'unchanged'} (background refresher or on demand)"
    )
    bob_refresh = web.RefreshClientIdentity(
        publisher_pb2.RefreshClientIdentityRequest(cookie_value=cookie.value, email=bob_email)
    )
    p.say(
        f"{bob}'s cookie refresh: "
        f"{enum_name(publisher_pb2.RefreshClientIdentityStatus, bob_refresh.status)}"
    )

    p.heading(
        "step 8, opt-out", f"{user} opts out (at the opt-out portal, which calls the operator)"
    )
    out = op.OptOut(
        operator_pb2.OptOutRequest(dii=operator_pb2.Dii(email=email)),
        metadata=bearer(stack.creds.optout_portal["api_key"]),
    )
    p.say(
        "opt-out recorded durably at "
        f"{time.strftime('%H:%M:%S', time.gmtime(out.opted_out_at / 1000))} UTC"
    )
    pause(1.0)
    ad = pub.ServeAd(
        publisher_pb2.ServeAdRequest(
            user_id=user, placement_id="top-banner", page_domain=PUBLISHER_DOMAIN, floor_price=0.5
        )
    )
    p.say("within a second the SSP knows (operator's opt-out stream); the next impression:")
    describe_impression(p, ad, tap)
    # The publisher may have refreshed already and ended the identity itself (no token sent);
    # a token that did go out must have been dropped by the SSP.
    ssp_knew = ad.token_disposition in (
        ssp_pb2.TOKEN_DISPOSITION_DROPPED_OPTOUT,
        ssp_pb2.TOKEN_DISPOSITION_ABSENT,
    )
    if not ssp_knew:
        p.say("the SSP did NOT drop the opted-out user's token (unexpected)")

    def chain_ended() -> bool:
        r = pub.GetAdvertisingToken(publisher_pb2.GetAdvertisingTokenRequest(user_id=user))
        return bool(r.status == publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_OPTOUT) or (
            r.status == publisher_pb2.GET_ADVERTISING_TOKEN_STATUS_NO_IDENTITY
        )

    ended = wait_until(chain_ended, stack.lifetimes.refresh_from_s + 3)
    p.say(
        "the publisher's next refresh answered OPTOUT: identity deleted, chain ended"
        if ended
        else "the refresh chain did NOT end (unexpected)"
    )
    ad = pub.ServeAd(
        publisher_pb2.ServeAdRequest(
            user_id=user, placement_id="top-banner", page_domain=PUBLISHER_DOMAIN, floor_price=0.5
        )
    )
    p.say("the next impression:")
    describe_impression(p, ad, tap)
    generated = _operator_calls(stack, "GenerateToken")
    again = pub.Login(
        publisher_pb2.LoginRequest(user_id=user, email=email, privacy_settings=CONSENT)
    )
    no_generate = (
        generated > 0  # the logins above were seen: the count is not blind
        and again.status == publisher_pb2.LOGIN_STATUS_OPTOUT
        and _operator_calls(stack, "GenerateToken", settle_s=0.3) == generated
    )
    p.say(
        f"{user} logs in again: {enum_name(publisher_pb2.LoginStatus, again.status)} "
        + (
            "(the publisher did not call generate again for an opted-out DII)"
            if no_generate
            else "(unexpected: the publisher called generate, or did not answer OPTOUT)"
        )
    )

    charlie, phone = CHARLIE
    p.heading("logout", f"{charlie} logs in with a phone number, then logs out")
    generated = _operator_calls(stack, "GenerateToken")
    pub.Login(publisher_pb2.LoginRequest(user_id=charlie, phone=phone, privacy_settings=CONSENT))
    # The login's own line first (it is written after its response), then the count: any
    # operator call but a background refresh (another user's may fall in this window).
    wait_until(lambda: _operator_calls(stack, "GenerateToken") > generated, 5.0)
    calls = _operator_calls(stack, *_NOT_REFRESH)
    logout = pub.Logout(publisher_pb2.LogoutRequest(user_id=charlie))
    after = pub.GetAdvertisingToken(publisher_pb2.GetAdvertisingTokenRequest(user_id=charlie))
    not_called = calls > 0 and _operator_calls(stack, *_NOT_REFRESH, settle_s=0.3) == calls
    p.say(
        f"identity deleted: {logout.deleted}; token afterwards: "
        f"{enum_name(publisher_pb2.GetAdvertisingTokenStatus, after.status)} "
        + (
            "(the operator was not called)"
            if not_called
            else "(unexpected: the operator was called)"
        )
    )
    if not (
        ended
        and changed
        and ssp_knew
        and no_generate
        and not_called
        and logout.deleted
        and client_side_ok
    ):
        raise StackError("the workflow did not behave as expected (see above)")


def _client_side(p: Printer, stack: Stack, tap: BidStreamTap) -> bool:
    """Client-side token generation: the page gets the token itself and sends it to the SSP
    with its ad request (Prebid.js's way). True when everything went as it should."""
    _, email = DANA
    p.heading(
        "client side",
        f"Or a page on {PUBLISHER_DOMAIN} generates the token itself (Prebid.js, the UID2 SDK)",
    )
    pair = stack.creds.cstg
    url = stack.operator_http_url()
    page = page_request(
        pair["public_key"], pair["subscription_id"], {"email_hash": b64_sha256(email)}
    )
    status, answer = post_page_request(url, page, f"https://{PUBLISHER_DOMAIN}")
    p.say(
        "the page hashed the email, encrypted it to the operator's public key (subscription "
        f"{pair['subscription_id']}) and POSTed /v2/token/client-generate: HTTP {status}, "
        f"{answer.get('status')}"
    )
    token = str(answer.get("body", {}).get("advertising_token", ""))
    if status != 200 or not token:
        return False
    p.say(f"advertising token: {short(token)} (marked client-side generated)")
    resp = stack.ssp().SubmitImpression(
        ssp_pb2.SubmitImpressionRequest(
            page_domain=PUBLISHER_DOMAIN,
            placement_id="in-article",
            floor_price=0.5,
            advertising_token=token,
        ),
        metadata=bearer(stack.creds.ssp_client_publisher_key),
    )
    describe_impression(p, resp, tap, sender="the page's ad request (Prebid.js)")
    elsewhere = page_request(
        pair["public_key"], pair["subscription_id"], {"email_hash": b64_sha256(email)}
    )
    refused, error = post_page_request(url, elsewhere, "https://copycat.example")
    p.say(
        f"the same call from a page on copycat.example: HTTP {refused} {error.get('status')} "
        "(only the site's own domains may generate its tokens)"
    )
    return bool(resp.token_disposition == ssp_pb2.TOKEN_DISPOSITION_VALID and refused == 403)


# Every OperatorService method the publisher could call, but RefreshToken.
_NOT_REFRESH = ("GenerateToken", "ValidateToken", "MapIdentity", "OptOut", "GetOptOutStatus")


def _operator_calls(stack: Stack, *methods: str, settle_s: float = 0.0) -> int:
    """How many calls of `methods` the operator has logged (one line per RPC). `settle_s`
    first lets a just-answered call's line, written after its response, reach the log."""
    if settle_s:
        pause(settle_s)
    return sum(
        1
        for e in list(stack.procs["operator"].events)
        if e.get("event") == "rpc" and str(e.get("method", "")).rsplit("/", 1)[-1] in methods
    )


def main() -> int:
    # Ctrl-C and SIGTERM both end the demo through the finally blocks that stop every service
    # (SIGINT explicitly: a shell starting us in the background would have it ignored). While
    # the services start, no gRPC call runs here, so KeyboardInterrupt may strike anywhere; the
    # walk switches to the flag (INTERRUPTS).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # `kill -USR1` shows where the demo is, as it does for the services.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    started = time.monotonic()
    stack: Stack | None = None
    print("UID2 publisher workflow — operator, SSP, DSP bidder and publisher as real processes")
    try:
        data_dir = keep_data_dir()
    except StackError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    try:
        with running_stack(data_dir, Lifetimes()) as started_stack:
            stack = started_stack
            ports = ", ".join(f"{n} :{p.port}" for n, p in stack.procs.items())
            signal.signal(signal.SIGINT, INTERRUPTS.record)
            signal.signal(signal.SIGTERM, INTERRUPTS.record)
            print(f"services up ({ports}); data in {data_dir or 'a temporary directory'}")
            walk(stack)
            check_interrupt()
            print("\nstopping services (SIGTERM, graceful drain) …", flush=True)
            codes = stack.stop_all()
        print("exit codes: " + ", ".join(f"{n} {c}" for n, c in codes.items()))
        if any(code != 0 for code in codes.values()):
            _report_stop_failures(stack)
            print("a service did not stop cleanly", file=sys.stderr)
            return 1
        print(f"done in {time.monotonic() - started:.1f} s; no service left running")
        return 0
    except KeyboardInterrupt:
        _report_stop_failures(stack)
        print("\ninterrupted: every service stopped", file=sys.stderr)
        return 130
    except (StackError, grpc.RpcError) as err:
        _report_stop_failures(stack)
        detail = err.details() if isinstance(err, grpc.RpcError) else str(err)
        print(f"\ndemo failed: {detail}", file=sys.stderr)
        return 1


def _report_stop_failures(stack: Stack | None) -> None:
    """A service that ignored SIGTERM was killed after 15 s; say which, with its last output and
    thread stacks (ServiceProcess.terminate), instead of only a bad exit code."""
    for name, why in (stack.stop_failures if stack else {}).items():
        print(f"{name} did not stop cleanly (killed): {why}", file=sys.stderr)


def _cli(argv: list[str]) -> int:
    """`python -m demo` takes no arguments (DATA_DIR in the environment keeps the data)."""
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv:
        print(
            "demo: error: takes no arguments; DATA_DIR=<new or empty dir> keeps its data "
            "(see --help)",
            file=sys.stderr,
        )
        return 2
    return main()


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
