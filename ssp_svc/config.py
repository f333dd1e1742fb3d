"""The SSP's settings: one frozen dataclass, built once at the edge (cli.py) from flags and
`UID2_SSP_*` environment variables, validated before anything starts."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bidstream.decryptor.key_cache import KEY_REFRESH_RANGE, MAX_KEY_REFRESH_S, MIN_KEY_REFRESH_S
from ssp_svc.bidders import BidderTarget
from svc_common.names import account_name
from svc_common.sensitive import shown
from svc_common.settings import UndiallableAddress, dial_address
from svc_common.sqlite_db import require_data_dir
from svc_common.tls import PeerTls, ServerTls

# The longest auction deadline --tmax-ms accepts.
MAX_TMAX_MS = 10_000


class ConfigError(ValueError):
    """An invalid setting; the message is one line fit for stderr."""


def parse_bidder(spec: str) -> BidderTarget:
    name, eq, address = spec.partition("=")
    name, address = name.strip(), address.strip()
    # A host name may hold a long number (an AWS load balancer's): not taken for a phone.
    problem = f"bidder must be NAME=HOST:PORT, got {shown(spec, numbers=False)}"
    if not eq or not name:
        raise ConfigError(problem)
    try:
        dial_address(address)
    except UndiallableAddress as exc:
        raise ConfigError(problem + exc.why) from None
    try:
        # Logged with every auction and a /metrics label: an account's name rule.
        name = account_name(name)
    except ValueError as exc:
        raise ConfigError(f"bidder name: {exc}") from None
    return BidderTarget(name, address)


# Bid requests held per slow bid-stream subscriber (about 1 KB each): a bound on its memory.
MAX_STREAM_BUFFER = 65_536


@dataclass(frozen=True)
class SspConfig:
    listen: str = "127.0.0.1:0"
    # Publisher and subscriber API keys: a data dir (SQLite) or a JSON publishers file.
    data_dir: Path | None = None
    publishers_file: Path | None = None
    # Operator ID_READER credentials; without them tokens pass through unchecked.
    operator: str | None = None
    operator_api_key: str | None = field(default=None, repr=False)  # never logged
    bidders: tuple[BidderTarget, ...] = ()
    tmax_ms: int = 150
    key_refresh_s: float = 3600.0
    early_key_refresh_min_s: float = 1.0
    stream_buffer: int = 1024
    max_subscribers: int = 16
    max_workers: int = 32
    # TLS: what this service serves with, and the CAs it trusts for the servers it calls
    # (svc_common.tls); None = plaintext.
    tls: ServerTls | None = None
    peer_tls: PeerTls | None = None

    def __post_init__(self) -> None:
        if (self.data_dir is None) == (self.publishers_file is None):
            raise ConfigError("give exactly one of --data-dir and --publishers-file")
        if self.data_dir is not None:
            require_data_dir(self.data_dir, ConfigError)
        if self.publishers_file is not None:
            _check_publishers_file(self.publishers_file)
        if bool(self.operator) != bool(self.operator_api_key):
            raise ConfigError("--operator and --operator-api-key go together")
        if not 1 <= self.tmax_ms <= MAX_TMAX_MS:
            raise ConfigError(f"tmax must be between 1 and {MAX_TMAX_MS} ms")
        names = [b.name for b in self.bidders]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            # Names pass the account-name rule (parse_bidder): safe to quote.
            raise ConfigError(
                f"bidder names must be unique: {', '.join(twice)} given more than once "
                "(--bidder, or UID2_SSP_BIDDERS)"
            )
        if not MIN_KEY_REFRESH_S <= self.key_refresh_s <= MAX_KEY_REFRESH_S:
            raise ConfigError(KEY_REFRESH_RANGE)
        if self.early_key_refresh_min_s < 0:
            raise ConfigError("the early key refresh interval must not be negative")
        if self.stream_buffer < 1 or self.max_subscribers < 1 or self.max_workers < 2:
            raise ConfigError("stream buffer, subscribers and workers must be positive")
        if self.stream_buffer > MAX_STREAM_BUFFER:
            raise ConfigError(f"the stream buffer must be at most {MAX_STREAM_BUFFER}")

    @property
    def decrypting(self) -> bool:
        return bool(self.operator and self.operator_api_key)


def _check_publishers_file(path: Path) -> None:
    """Refuses, before anything starts, a publishers file that cannot be one, saying why: "does
    not exist" for a path that does (a directory, /dev/null) sends whoever reads it looking in
    the wrong place."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"publishers file {path} does not exist") from None
    except OSError as exc:  # a parent that is a file, no search permission on a parent
        raise ConfigError(f"publishers file {path} cannot be read: {_reason(exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"publishers file {path} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        # /dev/null or another device, a pipe, a socket: nothing anyone keeps accounts in.
        raise ConfigError(f"publishers file {path} is not a regular file")
    if info.st_size == 0:
        raise ConfigError(
            f"publishers file {path} is empty (0 bytes): it must hold a JSON object with "
            "publishers and subscribers"
        )
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"publishers file {path} cannot be read: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
