"""Small fakes of the publisher's own peer interfaces (OperatorPeer, SspPeer)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from publisher_svc.model import (
    AdDecision,
    AuctionOutcome,
    GenerateOutcome,
    GenerateResult,
    HashedDii,
    Identity,
    Impression,
    PeerError,
    PrivacySettings,
    RefreshOutcome,
    RefreshResult,
    TokenDisposition,
)
from svc_common import call_context
from svc_common.clock import Clock

HOUR = 3_600_000
DAY = 24 * HOUR


@dataclass
class FakeOperator:
    clock: Clock
    refresh_from_ms: int = HOUR
    identity_ms: int = 3 * DAY
    refresh_ms: int = 30 * DAY
    optout_keys: set[str] = field(default_factory=set)  # generate answers OPTOUT
    refresh_optout_keys: set[str] = field(default_factory=set)  # refresh answers OPTOUT
    consent_required: bool = True
    down: bool = False
    refuse: bool = False  # answer PERMISSION_DENIED
    invalid_input_reason: str = ""  # generate answers INVALID_ARGUMENT with this reason
    delay_s: float = 0.0
    gate: threading.Event | None = None  # while set to an unset Event, calls wait for it
    generate_calls: list[tuple[HashedDii, PrivacySettings, int]] = field(default_factory=list)
    refresh_calls: list[str] = field(default_factory=list)
    down_reason: str = ""  # the reason a `down` operator's calls fail with
    # the request id each refresh was made under (svc_common.call_context), None outside a call
    refresh_request_ids: list[str | None] = field(default_factory=list)
    _chains: dict[str, tuple[str, int]] = field(default_factory=dict)
    _n: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    peak_in_flight: int = 0

    def _issue(self, dii_key: str) -> Identity:
        now = self.clock.now_ms()
        n = next(self._n)
        rt = f"refresh-{n}"
        self._chains[rt] = (dii_key, now + self.refresh_ms)
        return Identity(
            advertising_token=f"A4tok-{n}_x-Y",
            refresh_token=rt,
            identity_expires=now + self.identity_ms,
            refresh_from=now + self.refresh_from_ms,
            refresh_expires=now + self.refresh_ms,
            refresh_response_key=f"key-{n}",
        )

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.gate is not None:
            self.gate.wait(30)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _check(self) -> None:
        if self.down:
            raise PeerError("operator", "UNAVAILABLE", self.down_reason, unavailable=True)
        if self.refuse:
            raise PeerError("operator", "PERMISSION_DENIED", "ROLE_REQUIRED", unavailable=False)

    def generate(
        self, dii: HashedDii, privacy: PrivacySettings, on_behalf_of_site_id: int
    ) -> GenerateResult:
        self._enter()
        try:
            self.generate_calls.append((dii, privacy, on_behalf_of_site_id))
            self._check()
            if self.invalid_input_reason:
                raise PeerError(
                    "operator", "INVALID_ARGUMENT", self.invalid_input_reason, unavailable=False
                )
            if dii.key in self.optout_keys:
                return GenerateResult(GenerateOutcome.OPTOUT)
            if self.consent_required and not privacy.transparency_notice_accepted:
                return GenerateResult(GenerateOutcome.INSUFFICIENT_CONSENT)
            with self._lock:
                return GenerateResult(GenerateOutcome.SUCCESS, self._issue(dii.key))
        finally:
            self._leave()

    def refresh(self, refresh_token: str) -> RefreshResult:
        self._enter()
        try:
            self.refresh_calls.append(refresh_token)
            self.refresh_request_ids.append(call_context.request_id())
            self._check()
            chain = self._chains.get(refresh_token)
            if chain is None:
                return RefreshResult(RefreshOutcome.INVALID_TOKEN)
            dii_key, expires = chain
            if self.clock.now_ms() >= expires:
                return RefreshResult(RefreshOutcome.EXPIRED_TOKEN)
            if dii_key in self.refresh_optout_keys:
                return RefreshResult(RefreshOutcome.OPTOUT)
            with self._lock:
                return RefreshResult(RefreshOutcome.SUCCESS, self._issue(dii_key))
        finally:
            self._leave()


@dataclass
class FakeSsp:
    impressions: list[Impression] = field(default_factory=list)
    down: bool = False
    refusal: tuple[str, str] | None = None  # (code, reason) to refuse every impression with
    gate: threading.Event | None = None  # while set to an unset Event, calls wait for it
    in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submit_impression(self, impression: Impression) -> AdDecision:
        gate = self.gate
        if gate is not None:
            with self._lock:
                self.in_flight += 1
            try:
                gate.wait(30)
            finally:
                with self._lock:
                    self.in_flight -= 1
        if self.down:
            raise PeerError("ssp", "UNAVAILABLE", "", unavailable=True)
        if self.refusal is not None:
            raise PeerError("ssp", *self.refusal, unavailable=False)
        self.impressions.append(impression)
        token = impression.advertising_token
        return AdDecision(
            auction_id=f"auction-{len(self.impressions)}",
            outcome=AuctionOutcome.NO_FILL,
            token_disposition=TokenDisposition.PASSED_THROUGH if token else TokenDisposition.ABSENT,
            bids_received=0,
        )
