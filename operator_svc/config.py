"""The operator's settings: one frozen dataclass, built once at the edge (cli.py) from flags and
`UID2_OPERATOR_*` environment variables, validated before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from svc_common.sensitive import shown
from svc_common.settings import SettingError, split_host_port
from svc_common.tls import ServerTls

DAY_S = 86_400
HOUR_S = 3_600
# Far beyond any deployment's lifetimes (the official ones are days), and small enough that
# epoch milliseconds plus a lifetime still fit SQLite's and protobuf's int64.
MAX_LIFETIME_S = 10 * 365 * DAY_S
# Another process's writes (an opt-out, a client, a key) are used within this; the 1 s promise.
MIN_SYNC_INTERVAL_S = 0.01
MAX_SYNC_INTERVAL_S = 1.0
DEFAULT_CLOCK_SKEW_S = 1800
# A key lives this long unless a rotation shortens it to what its tokens need (admin.py).
KEY_LIFETIME_S = 365 * DAY_S
# How long a sharer's token is accepted (GetSharingKeys says so): the official operator's 30 days.
DEFAULT_MAX_SHARING_LIFETIME_S = 30 * DAY_S
# Scheduled key rotation (serve --rotate-keys-every): more often than hourly only multiplies the
# keys every decryptor holds (each is kept a token lifetime after its successor activates) and
# is more likely a unit mistake (minutes for seconds) than a policy.
# A day at least: superseded keys stay published 30 days (what a sharer's token may live),
# so hourly rotation would put some 720 keys per keyset into every decryptor's key container.
MIN_ROTATE_KEYS_EVERY_S = DAY_S
# A key rotated this late still leaves its successor a month before the key in use runs out:
# the margin the README suggests alerting on (uid2_operator_token_keys_run_out_in_seconds), so
# the schedule never sets off that alert, and a rotation failing for weeks is still caught.
MAX_ROTATE_KEYS_EVERY_S = KEY_LIFETIME_S - 30 * DAY_S
# How often serve looks whether a scheduled rotation is due; a rotation is then at most this
# late.
ROTATION_CHECK_INTERVAL_S = 60.0


class ConfigError(ValueError):
    """An invalid setting; the message is one line fit for stderr."""


@dataclass(frozen=True)
class OperatorConfig:
    """Everything `create_server` needs.

    Lifetimes are in seconds; the production defaults are those of the official operator
    (token 3 days, refresh token 30 days, refresh_from 1 hour after issue)."""

    data_dir: Path
    listen: str = "127.0.0.1:0"
    identity_scope: str = "UID2"
    token_lifetime_s: int = 3 * DAY_S
    refresh_lifetime_s: int = 30 * DAY_S
    refresh_from_s: int = HOUR_S
    # 0 means "the advertising token lifetime" (what decryptors accept for bid-stream tokens).
    max_bidstream_lifetime_s: int = 0
    max_sharing_lifetime_s: int = DEFAULT_MAX_SHARING_LIFETIME_S
    allow_clock_skew_s: int = DEFAULT_CLOCK_SKEW_S
    # How often other processes' writes to the same data dir are looked for.
    sync_interval_s: float = 0.1
    # Where the HTTP front door (official UID2 HTTP API, operator_svc/http) listens; None = not
    # served.
    http_listen: str | None = None
    # TLS for both the gRPC port and the HTTP API; None = plaintext.
    tls: ServerTls | None = None
    # Threads for the calls that block (durable opt-out writes, 5,000-item scans); token calls
    # run on the event loop.
    max_workers: int = 32
    # Scheduled rotation (domain/rotation.py): add keys, as `keys rotate` does, once the newest
    # master key is this old; 0 = never (rotation is left to cron).
    rotate_keys_every_s: int = 0
    # Once a day, rotate this fraction of the salt buckets, as `salts rotate` does; 0 = never.
    rotate_salts_daily_fraction: float = 0.0
    # Not a flag: tests shorten it.
    rotation_check_interval_s: float = ROTATION_CHECK_INTERVAL_S

    def __post_init__(self) -> None:
        self.validate()

    @property
    def bidstream_lifetime_s(self) -> int:
        return self.max_bidstream_lifetime_s or self.token_lifetime_s

    @property
    def accepted_lifetime_s(self) -> int:
        """The longest a token a master or site key encrypted is accepted after it was made:
        by a decryptor in the bid stream, or from a sharer. A key a rotation supersedes stays
        published that long (admin.rotate_keys_in)."""
        return max(self.token_lifetime_s, self.bidstream_lifetime_s, self.max_sharing_lifetime_s)

    def validate(self) -> None:
        if self.identity_scope not in ("UID2", "EUID"):
            raise ConfigError("identity scope must be UID2 or EUID")
        check_lifetimes(self.token_lifetime_s, self.refresh_lifetime_s)
        if self.refresh_from_s <= 0:
            raise ConfigError("refresh from must be positive")
        if self.refresh_from_s > self.token_lifetime_s:
            raise ConfigError("refresh from must not exceed the token lifetime")
        if self.max_bidstream_lifetime_s and not (
            self.token_lifetime_s <= self.max_bidstream_lifetime_s <= MAX_LIFETIME_S
        ):
            raise ConfigError(
                "max bidstream lifetime must be at least the token lifetime"
                f" and at most {MAX_LIFETIME_S} seconds"
            )
        if not 0 < self.max_sharing_lifetime_s <= MAX_LIFETIME_S:
            raise ConfigError(f"sharing lifetime must be within 1 and {MAX_LIFETIME_S} seconds")
        check_clock_skew(self.allow_clock_skew_s)
        if not MIN_SYNC_INTERVAL_S <= self.sync_interval_s <= MAX_SYNC_INTERVAL_S:
            raise ConfigError(
                f"sync interval must be within {MIN_SYNC_INTERVAL_S:g}"
                f" and {MAX_SYNC_INTERVAL_S:g} seconds"
            )
        if self.max_workers < 1:
            raise ConfigError("max workers must be positive")
        # 0 is off for both; a NaN fraction is not 0, so it reaches its check and is refused.
        if self.rotate_keys_every_s != 0:
            problem = rotate_keys_every_problem(self.rotate_keys_every_s)
            if problem:
                raise ConfigError(f"key rotation interval {problem}")
        if self.rotate_salts_daily_fraction != 0:
            problem = salts_fraction_problem(self.rotate_salts_daily_fraction)
            if problem:
                raise ConfigError(f"daily salt rotation fraction {problem}")
        if not self.rotation_check_interval_s > 0:
            raise ConfigError("rotation check interval must be positive")
        _check_listen(self.listen)
        if self.http_listen is not None:
            _check_listen(self.http_listen)


def rotate_keys_every_problem(every_s: int) -> str | None:
    """What is wrong with a key rotation schedule that is on (0 is off), or None. A phrase,
    so the CLI can name the flag and its variable before it, and the config its own name."""
    if MIN_ROTATE_KEYS_EVERY_S <= every_s <= MAX_ROTATE_KEYS_EVERY_S:
        return None
    got = shown(str(every_s), quoted=False)
    return (
        f"must be 0 (off) or within {MIN_ROTATE_KEYS_EVERY_S} and {MAX_ROTATE_KEYS_EVERY_S}"
        f" seconds (a day to the key lifetime less 30 days), got {got}"
    )


def salts_fraction_problem(fraction: float) -> str | None:
    """What is wrong with the fraction of salt buckets a daily rotation rotates, or None."""
    # Negated: NaN fails every comparison, so it is refused rather than let through.
    if not 0.0 < fraction <= 1.0:
        got = shown(repr(fraction), quoted=False)
        return f"must be above 0 and at most 1 (0 or unset: off), got {got}"
    return None


def check_clock_skew(allow_clock_skew_s: int) -> None:
    """The rule `serve` and `keys rotate` share: keys outlive their tokens by this much."""
    if not 0 <= allow_clock_skew_s <= MAX_LIFETIME_S:
        raise ConfigError(f"clock skew must be within 0 and {MAX_LIFETIME_S} seconds")


def check_lifetimes(token_lifetime_s: int, refresh_lifetime_s: int) -> None:
    """The rules on the two lifetimes that both serving and key rotation depend on: rotation
    keeps a superseded key only that long, so a non-positive one prunes keys still in use."""
    for name, value in (("token", token_lifetime_s), ("refresh", refresh_lifetime_s)):
        if value <= 0:
            raise ConfigError(f"{name} lifetime must be positive")
        if value > MAX_LIFETIME_S:
            raise ConfigError(f"{name} lifetime must be at most {MAX_LIFETIME_S} seconds")
    if token_lifetime_s > refresh_lifetime_s:
        raise ConfigError("token lifetime must not exceed the refresh lifetime")


def _check_listen(listen: str) -> None:
    try:
        split_host_port(listen)
    except SettingError as exc:
        raise ConfigError(f"listen address {exc}") from None
