"""CLI plumbing every console script shares: one-line usage errors (exit 2), and where a `serve`
setting comes from.

A setting is its flag when given, else its environment variable when set and not empty, else
its default; the flag's text and the variable's go through the same parser, and a value either
place gives that does not parse is one line naming both (`--tmax-ms (or UID2_SSP_TMAX_MS): ...`).
One resolver for the four services, so they agree on precedence, on what counts as unset, and
on how a mistake reads."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import structlog

from svc_common.sensitive import NOT_SHOWN, may_be_sensitive
from svc_common.settings import SettingError, boolean, host_port, lists_addresses
from svc_common.tls import (
    PeerTls,
    ServerTls,
    load_peer_tls,
    load_server_tls,
    requiring_client_certs,
)

T = TypeVar("T")


class UsageError(Exception):
    """A CLI mistake; printed as one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse without its usage block: a mistake is a UsageError, printed as one line."""

    _argv: tuple[str, ...] = ()

    def parse_known_args(  # type: ignore[override]  # the same call, recording what it parses
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._argv = tuple(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        raise UsageError(_screened(message, self._argv))


_WORD = re.compile(r"\S+")


def _screened(message: str, argv: Sequence[str] = ()) -> str:
    """argparse's message with what may be personal data or a secret replaced: argparse repeats
    what was typed (an unknown flag with its value, a stray argument, an invalid choice), and a
    failed `serve` writes it where its log goes. Each argument given (`argv`) is judged whole,
    as argparse joins them with spaces ("+1 (206) 555-7781" is one argument, three words); then
    each word. The words argparse adds itself (flag names, choices) never look like one, and an
    address (HOST:PORT) has no phone number in it."""
    for arg in sorted(argv, key=len, reverse=True):
        for piece in (arg, arg.split("=", 1)[-1]):
            if piece and _sensitive(piece):
                message = message.replace(piece, NOT_SHOWN)

    def one(word: re.Match[str]) -> str:
        text = word.group().strip("'\",()")
        if _sensitive(text) or _sensitive(text.split("=", 1)[-1]):
            return NOT_SHOWN
        return word.group()

    return _WORD.sub(one, message)


def _sensitive(text: str) -> bool:
    try:
        host_port(text)
    except SettingError:
        return may_be_sensitive(text)
    return may_be_sensitive(text, numbers=False)


def typed(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type` from a settings parser: its message, which shows a value only through
    `shown`, instead of argparse's "invalid int value: '...'", which repeats whatever was typed
    (a key pasted into the wrong flag)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


class FlagsWithEnv:
    """The settings of one parsed command line, each falling back to `<prefix><FLAG>` (flag
    `--tmax-ms`, prefix `UID2_SSP_`: `UID2_SSP_TMAX_MS`) unless `env_names` spells the
    variable otherwise. Flags must be declared without a type or default, so their text reaches
    the parser here, as the variable's does.

    `aliases` maps a second name of a setting to its flag (`operator-address` → `operator`),
    each declared as a flag of its own: the alias and its variable then give the setting as the
    flag and its variable do, and two of them giving different values is a mistake rather than
    one silently winning."""

    def __init__(
        self,
        args: argparse.Namespace,
        prefix: str,
        env_names: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self._args = args
        self._prefix = prefix
        self._env_names = dict(env_names or {})
        self._aliases = dict(aliases or {})

    def env_name(self, flag: str) -> str:
        return self._env_names.get(flag) or self._prefix + flag.upper().replace("-", "_")

    def unknown_variables(
        self, parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ
    ) -> list[str]:
        """The set variables with this prefix that no flag of `parser` (or of any of its
        commands) reads: a misspelt one (UID2_OPERATOR_TOKEN_LIFETIME for
        UID2_OPERATOR_TOKEN_LIFETIME_S) was silently ignored, and the default applied."""
        known = set(self._env_names.values())
        for flag in _long_flags(parser):
            known.add(self.env_name(flag))
        return sorted(
            name
            for name, value in environ.items()
            if name.startswith(self._prefix)
            and name not in known
            and not _service_link(name, value)
        )

    def spelled(self, flag: str) -> str:
        """`--flag (or VARIABLE)` for a message, naming the alias when the alias (or its
        variable) is what gave the setting."""
        given = self._given(flag)
        name = flag if given is None else given[0]
        return f"--{name} (or {self.env_name(name)})"

    def text(self, flag: str, default: str | None = None) -> str | None:
        """The setting's text; an empty flag or variable counts as not given."""
        given = self._given(flag)
        return default if given is None else given[1]

    def required(self, flag: str) -> str:
        value = self.text(flag)
        if value is None:
            raise UsageError(f"{self._all_names(flag)} is required")
        return value

    def value(self, flag: str, parse: Callable[[str], T], default: T) -> T:
        """The setting parsed; `default` as it is when neither place gives one."""
        text = self.text(flag)
        return default if text is None else self._parsed(flag, parse, text)

    def required_value(self, flag: str, parse: Callable[[str], T]) -> T:
        return self._parsed(flag, parse, self.required(flag))

    def _parsed(self, flag: str, parse: Callable[[str], T], text: str) -> T:
        try:
            return parse(text)
        except SettingError as exc:
            raise UsageError(f"{self.spelled(flag)}: {exc}") from None

    def _names(self, flag: str) -> list[str]:
        return [flag, *(alias for alias, of in self._aliases.items() if of == flag)]

    def _all_names(self, flag: str) -> str:
        return " or ".join(f"--{name} (or {self.env_name(name)})" for name in self._names(flag))

    def _given(self, flag: str) -> tuple[str, str] | None:
        """(the name that gave the setting, its text), or None: a flag before any variable."""
        for from_env in (False, True):
            found: dict[str, str] = {}
            for name in self._names(flag):
                if from_env:
                    value = os.environ.get(self.env_name(name))
                else:
                    value = getattr(self._args, name.replace("-", "_"))
                if value is not None and value != "":
                    found[name] = str(value)
            if len(set(found.values())) > 1:
                where = " and ".join(self.env_name(n) if from_env else f"--{n}" for n in found)
                raise UsageError(f"{where} are the same setting but differ: give one")
            if found:
                return next(iter(found.items()))
        return None


def _long_flags(parser: argparse.ArgumentParser) -> Iterable[str]:
    """Every `--flag` of `parser` and of its commands' parsers, without the dashes."""
    # argparse has no public way to walk its flags.
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                yield option[2:]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _long_flags(sub)


# The variables Kubernetes sets in every container for each Service of the namespace (a
# Service "uid2-dsp" gives UID2_DSP_SERVICE_HOST, UID2_DSP_PORT=tcp://10.0.0.5:50061, ...):
# not settings, and not the deployer's to remove (deployment review).
_SERVICE_LINK = re.compile(
    r"[A-Z0-9_]*_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)"
)
_SERVICE_LINK_URL = re.compile(r"(tcp|udp|sctp)://\S+")


def _service_link(name: str, value: str) -> bool:
    if _SERVICE_LINK.fullmatch(name):
        return True
    return name.endswith("_PORT") and _SERVICE_LINK_URL.fullmatch(value) is not None


def warn_unknown_variables(settings: FlagsWithEnv, parser: argparse.ArgumentParser) -> None:
    """Logs, at a `serve`'s start, the prefixed variables no setting reads (names only: their
    values may be keys)."""
    unknown = settings.unknown_variables(parser)
    if unknown:
        structlog.get_logger("cli").warning("unknown_setting_variables", variables=unknown)


def both_or_neither(settings: FlagsWithEnv, first: str, second: str) -> None:
    """A UsageError, naming the flags and their variables, when only one of two settings that
    work only together is given."""
    if (settings.text(first) is None) != (settings.text(second) is None):
        raise UsageError(f"{settings.spelled(first)} and {settings.spelled(second)} go together")


def add_tls_flags(parser: argparse.ArgumentParser, *, peers: str | None) -> None:
    """`serve`'s TLS flags: the server's certificate and key, the CAs its callers' certificates
    must chain to and, for a service that connects to others (`peers` names them, for the
    help), the CAs it trusts for them and the certificate it presents to them."""
    parser.add_argument(
        "--tls-cert", help="serve TLS with this PEM certificate chain (with --tls-key)"
    )
    parser.add_argument("--tls-key", help="the certificate's PEM private key, unencrypted")
    parser.add_argument(
        "--client-ca",
        help="PEM CA certificates: admit only callers presenting a certificate they signed "
        "(mutual TLS; needs --tls-cert)",
    )
    if peers is not None:
        parser.add_argument(
            "--peer-ca",
            help=f"PEM CA certificates: connect to {peers} over TLS, trusting these",
        )
        parser.add_argument(
            "--peer-cert",
            help=f"PEM certificate chain to present to {peers} (with --peer-key, --peer-ca)",
        )
        parser.add_argument("--peer-key", help="--peer-cert's PEM private key, unencrypted")


def server_tls(settings: FlagsWithEnv) -> ServerTls | None:
    """The TLS a `serve` serves with (--tls-cert and --tls-key, and --client-ca to require
    callers' certificates), or None for plaintext."""
    pair = _cert_and_key(settings, "tls-cert", "tls-key")
    client_ca = settings.text("client-ca")
    if pair is None:
        if client_ca is not None:
            raise UsageError(
                f"--client-ca (or {settings.env_name('client-ca')}) needs --tls-cert and "
                "--tls-key: callers' certificates are asked for only over TLS"
            )
        return None
    try:
        tls = load_server_tls(*pair)
    except SettingError as exc:
        raise UsageError(f"--tls-cert / --tls-key: {exc}") from None
    if client_ca is None:
        return tls
    try:
        return requiring_client_certs(tls, client_ca)
    except SettingError as exc:
        raise UsageError(f"--client-ca (or {settings.env_name('client-ca')}): {exc}") from None


def peer_tls(settings: FlagsWithEnv, *dialled: tuple[str, str | None]) -> PeerTls | None:
    """How a `serve` connects to the servers it calls: the CAs it trusts for them (--peer-ca)
    and the certificate it presents (--peer-cert and --peer-key), or None for plaintext.
    `dialled`: (flag, address) of each peer it calls, checked for a dial TLS cannot make."""
    tls = _peer_tls(settings)
    if tls is None:
        return None
    for flag, address in dialled:
        if address is not None and lists_addresses(address):
            # Review: every call then failed "Hostname Verification Check failed", told to the
            # caller as a certificate problem, though each peer's certificate was right.
            raise UsageError(
                f"{settings.spelled(flag)}: a list of addresses cannot be dialled over TLS "
                f"({settings.spelled('peer-ca')}): gRPC checks every peer's certificate against "
                "the whole list as one name, which no certificate holds; give "
                "dns:///NAME:PORT, a name that resolves to every address and that each "
                "certificate names"
            )
    return tls


def _peer_tls(settings: FlagsWithEnv) -> PeerTls | None:
    pair = _cert_and_key(settings, "peer-cert", "peer-key")
    if pair is not None and settings.text("peer-ca") is None:
        raise UsageError(
            f"--peer-cert needs --peer-ca (or {settings.env_name('peer-ca')}): a certificate "
            "is presented only over TLS"
        )
    tls = settings.value("peer-ca", load_peer_tls, None)
    if tls is None or pair is None:
        return tls
    try:
        return load_peer_tls(str(tls.ca_file), *pair)
    except SettingError as exc:
        raise UsageError(f"--peer-cert / --peer-key: {exc}") from None


def _cert_and_key(settings: FlagsWithEnv, cert: str, key: str) -> tuple[str, str] | None:
    """The two files of a certificate setting, or None when neither is given; a UsageError
    when only one is."""
    cert_file, key_file = settings.text(cert), settings.text(key)
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise UsageError(
            f"--{cert} (or {settings.env_name(cert)}) and --{key} "
            f"(or {settings.env_name(key)}) go together"
        )
    return cert_file, key_file


def server_tls_fields(tls: ServerTls | None) -> dict[str, bool]:
    """What a `serving` line says of the TLS a service serves (never a path or a key)."""
    return {"tls": tls is not None, "client_certs": tls is not None and tls.requires_client_certs}


def peer_tls_fields(tls: PeerTls | None) -> dict[str, bool]:
    """What a `serving` line says of how a service connects to its peers."""
    return {
        "peer_tls": tls is not None,
        "peer_cert": tls is not None and tls.cert_chain is not None,
    }


def print_json(obj: object) -> None:
    """One JSON line on stdout, flushed, for a command's output. OSError when it cannot be
    written, a closed stdout (`>&-`, where Python's print() writes nowhere and says nothing)
    included: what a command prints once (a new key) must not be lost silently."""
    out = sys.stdout
    if out is None:
        raise OSError(errno.EBADF, "stdout is closed")
    out.write(json.dumps(obj) + "\n")
    out.flush()


class NewKeyPrinter:
    """Prints a new API key's JSON, shown only once, from inside the transaction that saves it
    (the store's `deliver`): a key that cannot be printed (stdout full or closed) raises
    UsageError and is not kept, live and unseen. `void` words a failure after the print (the
    commit): the key on stdout does not work."""

    def __init__(self) -> None:
        self.printed = False

    def __call__(self, obj: object) -> None:
        try:
            print_json(obj)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UsageError(
                f"could not print the new API key ({reason}); nothing was saved"
            ) from None
        self.printed = True

    def void(self, exc: BaseException) -> str:
        if self.printed:
            return f"{exc}; {_VOID}"
        return str(exc)

    def void_on_stderr(self, prog: str) -> None:
        """For what ends the command between the print and the commit without an error of its
        own to word (Ctrl-C, SIGTERM): says on stderr that the printed key does not work."""
        if self.printed:
            print(f"{prog}: {_VOID}", file=sys.stderr)


_VOID = "the API key printed above was not saved and does not work"


def os_error_text(exc: OSError) -> str:
    """An OSError for a one-line message: its text without Python's "[Errno N]" prefix."""
    return exc.strerror or str(exc) or type(exc).__name__


def fail(prog: str, message: str) -> int:
    """Prints `prog: error: message` on stderr; returns the exit status for a mistake."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def add_metrics_flag(parser: argparse.ArgumentParser) -> None:
    """`--metrics-listen` and `--metrics-tls` on a `serve` command (svc_common.metrics serves
    them)."""
    parser.add_argument(
        "--metrics-listen", help="serve Prometheus /metrics on HOST:PORT; off unless given"
    )
    parser.add_argument(
        "--metrics-tls",
        action="store_true",
        default=None,
        help="serve /metrics over the service's TLS (--tls-cert, --tls-key, and --client-ca "
        "when given) instead of plain HTTP",
    )


@dataclass(frozen=True)
class MetricsSettings:
    """Where /metrics is served, and with what TLS (None: plain HTTP)."""

    listen: str
    tls: ServerTls | None = None


def show_variables(
    parser: argparse.ArgumentParser, settings: FlagsWithEnv, flags: Iterable[str] | None = None
) -> None:
    """Ends the help of each of `flags` (of every flag `parser` has, but --help, when None) with
    `(env NAME)`: the variable `settings` reads for it. Done here, once the flags are declared,
    so `--help` names every flag's variable, by the very rule (and overrides) it is read by,
    rather than each help text spelling it out by hand and some forgetting."""
    wanted = None if flags is None else set(flags)
    for action in parser._actions:
        flag = action.dest.replace("_", "-")
        if not action.option_strings or action.dest == "help":
            continue
        if wanted is not None and flag not in wanted:
            continue
        note = f"(env {settings.env_name(flag)})"
        if note not in (action.help or ""):
            action.help = f"{action.help} {note}" if action.help else note


def metrics_settings(settings: FlagsWithEnv, tls: ServerTls | None) -> MetricsSettings | None:
    """`--metrics-listen` and `--metrics-tls`; `tls` is what the service itself serves."""
    listen = settings.value("metrics-listen", host_port, None)
    over_tls = settings.value("metrics-tls", boolean, False)
    if over_tls and tls is None:
        raise UsageError(
            f"--metrics-tls (or {settings.env_name('metrics-tls')}) needs --tls-cert and "
            "--tls-key: /metrics is served with the service's own certificate"
        )
    if over_tls and listen is None:
        raise UsageError(
            f"--metrics-tls (or {settings.env_name('metrics-tls')}) needs --metrics-listen "
            f"(or {settings.env_name('metrics-listen')})"
        )
    if listen is None:
        return None
    return MetricsSettings(listen, tls if over_tls else None)
