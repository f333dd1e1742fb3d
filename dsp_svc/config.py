"""The sample DSP's settings, built once at the edge (cli.py) from flags and `UID2_DSP_*`
environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from bidstream.decryptor.key_cache import KEY_REFRESH_RANGE, MAX_KEY_REFRESH_S, MIN_KEY_REFRESH_S
from svc_common.impression_limits import MAX_FLOOR_PRICE
from svc_common.names import account_name
from svc_common.tls import PeerTls, ServerTls

# The longest wait before answering --delay-ms accepts.
MAX_DELAY_MS = 60_000


class ConfigError(ValueError):
    """An invalid setting; the message is one line fit for stderr."""


class Mode(Enum):
    NORMAL = "normal"
    SLOW = "slow"  # sleeps delay_ms (default 1000) before answering
    FAIL = "fail"  # answers UNAVAILABLE
    GARBAGE = "garbage"  # answers a malformed bid response


@dataclass(frozen=True)
class DspConfig:
    name: str
    listen: str = "127.0.0.1:0"
    operator: str | None = None
    operator_api_key: str | None = field(default=None, repr=False)  # never logged
    base_price: float = 1.0
    identified_bonus: float = 1.5
    delay_ms: int = 0
    fail_rate: float = 0.0
    mode: Mode = Mode.NORMAL
    key_refresh_s: float = 3600.0
    max_workers: int = 32
    # TLS: what this service serves with, and the CAs it trusts for the servers it calls
    # (svc_common.tls); None = plaintext.
    tls: ServerTls | None = None
    peer_tls: PeerTls | None = None

    def __post_init__(self) -> None:
        try:
            # Logged and sent as the seat of every bid: an account's name rule.
            account_name(self.name)
        except ValueError as exc:
            raise ConfigError(f"--name: {exc}") from None
        if bool(self.operator) != bool(self.operator_api_key):
            raise ConfigError("--operator and --operator-api-key go together")
        if self.base_price < 0 or self.identified_bonus < 0:
            raise ConfigError("prices must not be negative")
        if self.base_price + self.identified_bonus > MAX_FLOOR_PRICE:
            # The SSP throws such a bid out as a bidder's bug: every identified bid would be.
            raise ConfigError(
                f"the base price and the identified bonus together must be at most "
                f"{MAX_FLOOR_PRICE:g}"
            )
        if not 0 <= self.delay_ms <= MAX_DELAY_MS:
            raise ConfigError(f"delay must be between 0 and {MAX_DELAY_MS} ms")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError("fail rate must be between 0 and 1")
        if not MIN_KEY_REFRESH_S <= self.key_refresh_s <= MAX_KEY_REFRESH_S:
            raise ConfigError(KEY_REFRESH_RANGE)

    @property
    def effective_delay_ms(self) -> int:
        if self.mode is Mode.SLOW and self.delay_ms == 0:
            return 1000
        return self.delay_ms
