"""Certificates re-read when their files change, so a deployment that renews certificates
(cert-manager, an ACME client, a SPIFFE agent: often daily, sometimes hourly) need not restart
its services to use the new ones: what a server presents (ReloadingServerTls) and what a service
trusts and presents to its peers (ReloadingChannel, which `open_channel` gives).

Checked when a connection's handshake starts, at most once per `recheck_s` (one `stat` per
file): gRPC asks through its dynamic credentials' fetcher, the operator's HTTP API through the
TLS context's ClientHello callback. Connections already open keep the certificate they agreed
on. New files are checked as at start-up (the key is the certificate's, OpenSSL takes them)
before they are used: files caught half-written by a renewal (a new certificate beside the old
key) leave the old pair in use, with one warning, and are read again once they change again.
Callers' CAs (--client-ca) are re-read the same way.

A channel to a peer checks its files (--peer-ca, --peer-cert, --peer-key) the same way when a
call starts; after a change that loads it opens a new channel for the calls that follow, and
closes the old one `OLD_CHANNEL_GRACE_S` later, once the calls still on it have had their
time (a stream still open then is cut, and its reader reconnects, as after any break)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog

from svc_common.clock import Monotonic, SystemClock
from svc_common.settings import SettingError
from svc_common.tls import (
    FileStates,
    PeerTls,
    ServerTls,
    file_states,
    load_peer_tls,
    load_server_tls,
    requiring_client_certs,
)

_log = structlog.get_logger("tls")

# How long calls started on a channel replaced by a renewal have before it is closed.
OLD_CHANNEL_GRACE_S = 60.0

# How often, at most, a handshake looks at the files: renewals take effect within this, and a
# flood of new connections costs one stat per file per second.
RECHECK_S = 1.0


class ReloadingServerTls:
    """The ServerTls a server presents now: `initial`, then whatever its files hold after a
    change that loads cleanly. Thread-safe: gRPC's fetcher runs on its own threads."""

    def __init__(
        self,
        initial: ServerTls,
        *,
        listener: str = "grpc",
        monotonic: Monotonic | None = None,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self._tls = initial
        self._listener = listener  # which of a process's listeners, in its log lines
        paths = (initial.cert_file, initial.key_file, initial.client_ca_file)
        self._reader = _Reader(
            tuple(p for p in paths if p is not None),
            initial.states,
            monotonic or SystemClock(),
            recheck_s,
        )
        self._lock = threading.Lock()

    def current(self) -> ServerTls:
        """The certificate to present, after reading its files again if they changed and a
        look is due."""
        if not self._reader.due():
            return self._tls
        with self._lock:
            seen = self._reader.changed()
            if seen is None:
                return self._tls
            try:
                tls = load_server_tls(str(self._tls.cert_file), str(self._tls.key_file))
                if self._tls.client_ca_file is not None:
                    tls = requiring_client_certs(tls, str(self._tls.client_ca_file))
            except SettingError as exc:
                self._reader.refused(seen, exc, "tls_reload_failed", listener=self._listener)
                return self._tls
            self._reader.loaded(tls.states)
            self._tls = tls
            _log.info("tls_reloaded", listener=self._listener, cert_file=str(tls.cert_file))
            return tls

    def grpc_credentials(self) -> Any:
        """Server credentials for grpc (sync or aio) that present the current certificate."""
        initial = self.current()
        presented = [initial]

        def fetch() -> Any:
            # Runs in gRPC core before every handshake: it must never raise there.
            try:
                tls = self.current()
                if tls is presented[0]:
                    return None
                presented[0] = tls
                return _certificate_configuration(tls)
            except Exception:
                _log.exception("tls_reload_error")
                return None

        return grpc.dynamic_ssl_server_credentials(
            _certificate_configuration(initial),
            fetch,
            require_client_authentication=initial.requires_client_certs,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server SSLContext (the operator's HTTP API) whose handshakes use the current
        certificate: its ClientHello callback, which OpenSSL calls with or without SNI, moves
        each connection to a context built from the current files."""
        base_tls = self.current()
        base = base_tls.ssl_context()
        # (files, context) in use: only the event loop's thread reads and writes it.
        latest: list[tuple[ServerTls, ssl.SSLContext]] = [(base_tls, base)]

        def on_client_hello(conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            tls = self.current()
            if tls is not latest[0][0]:
                try:
                    latest[0] = (tls, tls.ssl_context())
                except (OSError, ssl.SSLError) as exc:
                    # The files changed again since they were checked: keep the context in
                    # use (once per state, not per handshake); the change is read next.
                    latest[0] = (tls, latest[0][1])
                    _log.warning("tls_reload_failed", listener="http", error=type(exc).__name__)
            if latest[0][1] is not base:
                conn.context = latest[0][1]

        base.sni_callback = on_client_hello
        return base


def _certificate_configuration(tls: ServerTls) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(tls.private_key, tls.cert_chain)], root_certificates=tls.client_ca
    )


# Every channel to a peer reconnects within a second of the peer coming back. gRPC's default
# backoff grows to two minutes: after a 90 s operator outage an SSP's and a DSP's opt-out
# streams came back 24-31 s late (opt-outs not applied meanwhile), and a bidder that had been
# down missed auctions for 30 s after it was up again.
# (Not grpc.min_reconnect_backoff_ms: gRPC also takes it as the connect timeout, 20 s by
# default, and at 100 ms a handshake over a slow link was abandoned and retried forever.)
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def open_channel(
    target: str,
    tls: PeerTls | None,
    options: Sequence[tuple[str, Any]] = (),
    *,
    monotonic: Monotonic | None = None,
) -> grpc.Channel:
    """A channel to `target` (HOST:PORT): TLS verified against `tls`'s CAs when given (the
    server's certificate must name HOST), presenting `tls`'s certificate when it has one, and
    following renewals of those files; else plaintext. RECONNECT_OPTIONS unless `options`
    says otherwise."""
    options = list({**dict(RECONNECT_OPTIONS), **dict(options)}.items())
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return ReloadingChannel(target, tls, options, monotonic=monotonic)


def _secure_channel(target: str, tls: PeerTls, options: Sequence[tuple[str, Any]]) -> Any:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.cert_chain,
    )
    return grpc.secure_channel(target, credentials, options=list(options))


class _Reader:
    """Files to watch, and whether they changed since the last state that loaded; at most one
    look per `recheck_s`, and one warning per state that does not load."""

    def __init__(
        self,
        paths: tuple[Path, ...],
        read: FileStates,
        monotonic: Monotonic,
        recheck_s: float,
    ) -> None:
        """`read`: the files' states when what is in use was read (before, so a change after
        it is seen as one)."""
        self._paths = paths
        self._monotonic = monotonic
        self._recheck_s = recheck_s
        self._seen = read
        self._failed: FileStates | None = None
        self._next_check = monotonic.monotonic_s() + recheck_s

    def due(self) -> bool:
        return self._monotonic.monotonic_s() >= self._next_check

    def changed(self) -> FileStates | None:
        """The files' new state when a look is due and finds one not seen before; caller holds
        the owner's lock."""
        now = self._monotonic.monotonic_s()
        if now < self._next_check:
            return None
        self._next_check = now + self._recheck_s
        seen = file_states(self._paths)
        return None if seen in (self._seen, self._failed) else seen

    def loaded(self, read: FileStates) -> None:
        """What is in use now was read with the files in these states."""
        self._seen, self._failed = read, None

    def refused(self, seen: FileStates, error: SettingError, event: str, **where: str) -> None:
        # Paths and reasons only: SettingError never quotes a file's contents.
        _log.warning(event, error=str(error), using="the previous files", **where)
        self._failed = seen


class ReloadingChannel(grpc.Channel):  # type: ignore[misc]  # grpc has no type hints: Channel is Any
    """A TLS channel that moves to new files when its certificates are renewed: stubs built on
    it keep working, each call going to the channel current when it starts."""

    def __init__(
        self,
        target: str,
        tls: PeerTls,
        options: Sequence[tuple[str, Any]] = (),
        *,
        monotonic: Monotonic | None = None,
        recheck_s: float = RECHECK_S,
        grace_s: float = OLD_CHANNEL_GRACE_S,
    ) -> None:
        self._target = target
        self._tls = tls
        self._options = tuple(options)
        self._grace_s = grace_s
        paths = tuple(p for p in (tls.ca_file, tls.cert_file, tls.key_file) if p is not None)
        self._reader = _Reader(paths, tls.states, monotonic or SystemClock(), recheck_s)
        self._lock = threading.Lock()
        # (generation, channel): read without the lock on every call; replaced whole.
        self._current: tuple[int, Any] = (0, _secure_channel(target, tls, self._options))
        self._retired: dict[Any, threading.Timer] = {}  # replaced channel -> its closing
        self._closed = False

    def current(self) -> tuple[int, Any]:
        """The channel for a call starting now, after moving to renewed files if a look is due."""
        held = self._current
        if not self._reader.due() or self._closed:
            return held
        with self._lock:
            seen = self._reader.changed()
            if seen is None or self._closed:
                return self._current
            try:
                tls = load_peer_tls(
                    str(self._tls.ca_file),
                    None if self._tls.cert_file is None else str(self._tls.cert_file),
                    None if self._tls.key_file is None else str(self._tls.key_file),
                )
            except SettingError as exc:
                self._reader.refused(seen, exc, "peer_tls_reload_failed", target=self._target)
                return self._current
            self._reader.loaded(tls.states)
            generation, old = self._current
            self._current = (generation + 1, _secure_channel(self._target, tls, self._options))
            timer = threading.Timer(self._grace_s, self._close_retired, args=(old,))
            timer.daemon = True
            self._retired[old] = timer
            timer.start()
            _log.info("peer_tls_reloaded", target=self._target)
            return self._current

    def _close_retired(self, old: Any) -> None:
        with self._lock:
            if self._retired.pop(old, None) is None:
                return  # closed with the channel already
        old.close()

    def _multicallable(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _FollowingMultiCallable(self, kind, args, kwargs)

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._multicallable("unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._multicallable("unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._multicallable("stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._multicallable("stream_stream", args, kwargs)

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self.current()[1].subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self._current[1].unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = [self._current[1], *self._retired]
            for timer in self._retired.values():
                timer.cancel()
            self._retired.clear()
        for channel in channels:
            channel.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _FollowingMultiCallable:
    """A stub's method on a ReloadingChannel: made anew on the current channel after a renewal,
    so each call goes where the channel is now."""

    def __init__(
        self, channel: ReloadingChannel, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._args = args
        self._kwargs = kwargs
        self._held: tuple[int, Any] = (-1, None)

    def _now(self) -> Any:
        generation, channel = self._channel.current()
        held = self._held
        if held[0] != generation:
            held = (generation, getattr(channel, self._kind)(*self._args, **self._kwargs))
            self._held = held
        return held[1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._now()(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._now().with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._now().future(*args, **kwargs)
