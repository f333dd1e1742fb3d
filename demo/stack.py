"""The whole suite as real processes on free loopback ports: operator, a DSP bidder, the SSP and
two publishers (server-side and client-side storage). `make demo` walks the workflow on it; the
end-to-end tests assert on it.

Everything is set up through the console scripts, as a newcomer would: `uid2-operator init`,
`site add`, `client add`, `uid2-ssp publisher add`, then each service's `serve`."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from demo.processes import ServiceProcess, run_cli
from uid2.operator.v1 import operator_pb2_grpc
from uid2.publisher.v1 import publisher_pb2_grpc
from uid2.ssp.v1 import ssp_pb2_grpc

PUBLISHER_SITE_ID = 101
PUBLISHER_DOMAIN = "news.example.com"
SSO_SITE_ID = 150
SSP_SITE_ID = 201
DSP_SITE_ID = 301
OPTOUT_PORTAL_SITE_ID = 401


class StackError(RuntimeError):
    """A setup step failed; the message says which, with the command's own error line."""


@dataclass(frozen=True)
class Lifetimes:
    """Short lifetimes so a demo sees refreshes within seconds (production: 1 h, 3 d, 30 d)."""

    refresh_from_s: int = 2
    token_lifetime_s: int = 60
    refresh_lifetime_s: int = 120


@dataclass(frozen=True)
class StackTls:
    """PEM files that turn TLS on for every service and every connection between them: each
    serves with `cert`/`key` and trusts `ca` for the others (and so do the stack's stubs).
    With `client_certs`, mutual TLS too: the publishers, the SSP and the DSP admit only callers
    with a certificate `ca` signed, and every service and stub presents `cert`. (Not the
    operator: its callers authenticate with API keys, and the official SDKs present none.)"""

    ca: Path
    cert: Path
    key: Path
    client_certs: bool = False


@dataclass
class Credentials:
    """What `client add` and `uid2-ssp publisher add` printed; held in memory only."""

    publisher: dict[str, Any] = field(default_factory=dict)
    sso_provider: dict[str, Any] = field(default_factory=dict)
    ssp_reader: dict[str, Any] = field(default_factory=dict)
    dsp_reader: dict[str, Any] = field(default_factory=dict)
    optout_portal: dict[str, Any] = field(default_factory=dict)
    mapper: dict[str, Any] = field(default_factory=dict)
    ssp_publisher_key: str = ""
    ssp_client_publisher_key: str = ""
    ssp_subscriber_key: str = ""
    # The site's client-side generation subscription: subscription_id and public_key, which a
    # page holds (they are public).
    cstg: dict[str, Any] = field(default_factory=dict)


class Stack:
    def __init__(
        self, data_dir: Path, lifetimes: Lifetimes | None = None, tls: StackTls | None = None
    ) -> None:
        self.data_dir = data_dir
        self.lifetimes = lifetimes or Lifetimes()
        self.tls = tls
        self.creds = Credentials()
        self.procs: dict[str, ServiceProcess] = {}
        # Stopped processes stay here so their logs can still be read (privacy checks).
        self.stopped: list[ServiceProcess] = []
        self._channels: list[grpc.Channel] = []
        # Why a service did not stop cleanly in stop_all (its last output and thread stacks).
        self.stop_failures: dict[str, str] = {}

    # -- set-up through the CLIs -------------------------------------------------------------

    def _cli(self, *args: str) -> str:
        result = run_cli(list(args))
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise StackError(f"{args[0]} {args[1]} failed: {last}")
        return result.stdout

    def _client(self, site_id: int, name: str, roles: str) -> dict[str, Any]:
        out = self._cli(
            "uid2-operator", "client", "add", "--data-dir", str(self.operator_dir),
            "--site-id", str(site_id), "--name", name, "--roles", roles,
        )  # fmt: skip
        parsed: dict[str, Any] = json.loads(out)
        return parsed

    @property
    def operator_dir(self) -> Path:
        return self.data_dir / "operator"

    def provision(self) -> None:
        """Creates the operator's store, sites and API clients, and the SSP's publisher keys."""
        op = str(self.operator_dir)
        self._cli("uid2-operator", "init", "--data-dir", op)
        self._cli(
            "uid2-operator", "site", "add", "--data-dir", op, "--site-id",
            str(PUBLISHER_SITE_ID), "--name", "Example News", "--domain", PUBLISHER_DOMAIN,
        )  # fmt: skip
        c = self.creds
        c.publisher = self._client(PUBLISHER_SITE_ID, "example-news", "GENERATOR")
        c.sso_provider = self._client(SSO_SITE_ID, "example-sso", "GENERATOR")
        self._cli(
            "uid2-operator", "delegation", "grant", "--data-dir", op,
            "--site-id", str(PUBLISHER_SITE_ID), "--client-name", "example-sso",
        )  # fmt: skip
        c.ssp_reader = self._client(SSP_SITE_ID, "example-ssp", "ID_READER")
        c.dsp_reader = self._client(DSP_SITE_ID, "example-dsp", "ID_READER")
        c.optout_portal = self._client(OPTOUT_PORTAL_SITE_ID, "optout-portal", "OPTOUT")
        c.mapper = self._client(PUBLISHER_SITE_ID, "example-news-mapper", "MAPPER")
        c.cstg = json.loads(
            self._cli(
                "uid2-operator", "keypair", "add", "--data-dir", op,
                "--site-id", str(PUBLISHER_SITE_ID),
            )
        )  # fmt: skip
        ssp_dir = self.data_dir / "ssp"
        ssp_dir.mkdir(parents=True, exist_ok=True)
        for attr, name in (
            ("ssp_publisher_key", "example-news"),
            ("ssp_client_publisher_key", "example-news-web"),
        ):
            out = self._cli(
                "uid2-ssp", "publisher", "add", "--data-dir", str(ssp_dir), "--name", name,
                "--domain", PUBLISHER_DOMAIN,
            )  # fmt: skip
            setattr(c, attr, json.loads(out)["api_key"])
        out = self._cli(
            "uid2-ssp", "subscriber", "add", "--data-dir", str(ssp_dir), "--name", "analytics"
        )
        c.ssp_subscriber_key = json.loads(out)["api_key"]

    # -- processes ----------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        if self.tls is not None:
            args, env = self._with_tls(args, env or {})
        # Registered before the wait for its `serving` line, and a Ctrl-C (KeyboardInterrupt)
        # held back until it is: a process spawned but not in self.procs is beyond stop_all's
        # reach and, in its own session, would run on after the demo exits.
        with _stop_signals_deferred():
            proc = ServiceProcess(args, env=env)
            self.procs[name] = proc
        proc.wait_ready()

    def start_operator(self, port: int = 0) -> None:
        lt = self.lifetimes
        self._start(
            "operator",
            [
                "uid2-operator", "serve", "--data-dir", str(self.operator_dir),
                "--listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0",
                "--refresh-from", str(lt.refresh_from_s),
                "--token-lifetime", str(lt.token_lifetime_s),
                "--refresh-lifetime", str(lt.refresh_lifetime_s),
            ],
        )  # fmt: skip

    def start_all(self, *, bidder_mode: str = "normal") -> None:
        self.start_operator()
        op = self.procs["operator"].address
        c = self.creds
        self._start(
            "dsp",
            [
                "uid2-dsp", "serve", "--listen", "127.0.0.1:0", "--name", "example-dsp",
                "--operator", op, "--mode", bidder_mode,
            ],
            env={"UID2_DSP_OPERATOR_API_KEY": c.dsp_reader["api_key"]},
        )  # fmt: skip
        self._start(
            "ssp",
            [
                "uid2-ssp", "serve", "--data-dir", str(self.data_dir / "ssp"),
                "--listen", "127.0.0.1:0", "--operator", op,
                "--bidder", f"example-dsp={self.procs['dsp'].address}", "--tmax-ms", "300",
            ],
            env={"UID2_SSP_OPERATOR_API_KEY": c.ssp_reader["api_key"]},
        )  # fmt: skip
        self.start_publisher("publisher", "server", c.ssp_publisher_key)
        self.start_publisher("publisher-web", "client", c.ssp_client_publisher_key)

    def start_publisher(self, name: str, mode: str, ssp_key: str) -> None:
        data = self.data_dir / name
        data.mkdir(parents=True, exist_ok=True)
        self._start(
            name,
            [
                "uid2-publisher", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data),
                "--operator-address", self.procs["operator"].address,
                "--site-id", str(PUBLISHER_SITE_ID),
                "--ssp-address", self.procs["ssp"].address, "--storage-mode", mode,
            ],
            # Keys travel in the environment, not argv, where `ps` would show them.
            env={
                "UID2_PUBLISHER_OPERATOR_API_KEY": self.creds.publisher["api_key"],
                "UID2_PUBLISHER_SSP_API_KEY": ssp_key,
            },
        )  # fmt: skip

    def _with_tls(self, args: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """`serve`'s TLS settings: the certificate and key through the environment, the CAs
        to trust through the flag (both ways a deployment may use)."""
        assert self.tls is not None
        prefix = "UID2_" + args[0].removeprefix("uid2-").upper() + "_"
        env = {
            **env,
            prefix + "TLS_CERT": str(self.tls.cert),
            prefix + "TLS_KEY": str(self.tls.key),
        }
        if args[0] != "uid2-operator":  # the only service that calls no other
            args = [*args, "--peer-ca", str(self.tls.ca)]
            if self.tls.client_certs:
                args = [*args, "--client-ca", str(self.tls.ca)]
                env[prefix + "PEER_CERT"] = str(self.tls.cert)
                env[prefix + "PEER_KEY"] = str(self.tls.key)
        return args, env

    def stop(self, name: str, *, hard: bool = False) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        self.stopped.append(proc)
        if hard:
            proc.kill()
            return proc.proc.returncode
        return proc.terminate()

    def stop_all(self) -> dict[str, int | None]:
        # A second Ctrl-C while stopping would abort this loop and leave the rest running (they
        # sit in their own sessions, out of the terminal's reach): stopping is not interruptible.
        with _stop_signals_ignored():
            return self._stop_all()

    def _stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.procs)):
            try:
                codes[name] = self.stop(name)
            except Exception as exc:  # keep stopping the others; the caller sees None for this one
                codes[name] = None
                self.stop_failures[name] = str(exc)
        # Channels last: after a call interrupted by Ctrl-C, grpc's close() has been known to
        # hang (grpc/grpc#19973), and the services must be stopped whatever happens here.
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        return codes

    def logs(self) -> str:
        """Everything every service process (running or stopped) wrote."""
        return "".join(p.log_text() for p in [*self.stopped, *self.procs.values()])

    # -- stubs ----------------------------------------------------------------------------------

    def _channel(self, name: str) -> grpc.Channel:
        address = self.procs[name].address
        if self.tls is None:
            channel = grpc.insecure_channel(address)
        else:
            channel = grpc.secure_channel(address, self.tls_credentials())
        self._channels.append(channel)
        return grpc.intercept_channel(channel, _DefaultDeadline(UNARY_DEADLINE_S))

    def tls_credentials(self) -> grpc.ChannelCredentials:
        """What the stack's stubs connect with: trusting `ca`, and presenting `cert` when the
        services require callers' certificates."""
        assert self.tls is not None
        if not self.tls.client_certs:
            return grpc.ssl_channel_credentials(self.tls.ca.read_bytes())
        return grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.key.read_bytes(), self.tls.cert.read_bytes()
        )

    def publisher(self, name: str = "publisher") -> publisher_pb2_grpc.PublisherServiceStub:
        return publisher_pb2_grpc.PublisherServiceStub(self._channel(name))

    def operator_http_url(self) -> str:
        """The operator's official HTTP API (client-side generation calls it from the page)."""
        serving = next(e for e in self.procs["operator"].events if e.get("event") == "serving")
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{serving['http_port']}"

    def operator(self) -> operator_pb2_grpc.OperatorServiceStub:
        return operator_pb2_grpc.OperatorServiceStub(self._channel("operator"))

    def ssp(self) -> ssp_pb2_grpc.SspServiceStub:
        return ssp_pb2_grpc.SspServiceStub(self._channel("ssp"))


# Every unary call the demo and its tests make gets this deadline unless it sets its own: a
# service that hangs then fails the call instead of the whole run, and the demo's Ctrl-C check
# (demo.__main__._Interrupts) is never more than this far away. Streams keep none.
UNARY_DEADLINE_S = 10.0


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self._timeout_s)
        return continuation(details, request)


def bearer(api_key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {api_key}"),)


@contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change signal handlers; it is the one they interrupt
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextmanager
def _stop_signals_deferred() -> Iterator[None]:
    """SIGINT / SIGTERM during the block reach their handler only once it has ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    if caught and callable(handler := saved[signal.Signals(caught[0])]):
        handler(caught[0], None)


@contextmanager
def running_stack(
    data_dir: Path | None = None, lifetimes: Lifetimes | None = None, **start: Any
) -> Iterator[Stack]:
    """A provisioned, started stack, stopped on exit whatever happens."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="uid2-demo-") as tmp:
        root = data_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        stack = Stack(root, lifetimes)
        try:
            stack.provision()
            stack.start_all(**start)
            yield stack
        finally:
            stack.stop_all()


def keep_data_dir() -> Path | None:
    """DATA_DIR, where the demo keeps its stack's data; None for a temporary directory. It must
    be new or empty: the walk provisions a fresh stack, and a second run would find the first
    one's publisher account and opt-outs there and fail half-way."""
    value = os.environ.get("DATA_DIR", "").strip()
    if not value:
        return None
    path = Path(value).resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StackError(
            f"DATA_DIR {path} is not an empty directory; give a new one (each run provisions "
            "its own stack)"
        )
    return path
