"""Command line of the lab tools: ``provision`` a vault, run the ``gateway``.

Usage::

    python -m haproxy_acme_supervisor.lab demo [--state-dir DIR]
    python -m haproxy_acme_supervisor.lab provision --vault DIR \\
        --domain lab.local [--domain ...] [--seed-to PATH]
    python -m haproxy_acme_supervisor.lab gateway --vault DIR \\
        --listen 127.0.0.1:14000 --http01-port 8080 [--http01-host 127.0.0.1]

The gateway prints its directory URL on stdout once it listens, then serves
until SIGTERM or SIGINT.
"""

import argparse
import ipaddress
import logging
import signal
import threading
from pathlib import Path
from typing import NoReturn

import structlog

from haproxy_acme_supervisor import logs
from haproxy_acme_supervisor.lab import demo
from haproxy_acme_supervisor.lab.errors import VaultError
from haproxy_acme_supervisor.lab.gateway import Gateway
from haproxy_acme_supervisor.lab.vault import (
    Vault,
    is_dns_name,
    provision,
    write_seed,
)

_log = structlog.get_logger()

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line naming the option, without the usage block argparse adds.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Run a lab command and return its exit status."""
    parser = _build_parser()
    arguments = parser.parse_args(argv)
    logs.configure(_LOG_LEVELS[arguments.log_level])
    if arguments.command == "provision":
        return _run_provision(parser, arguments)
    if arguments.command == "demo":
        return demo.main(arguments.state_dir)
    return _run_gateway(parser, arguments)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="haproxy-acme-supervisor lab",
        description="Lab CA that serves a stored certificate over ACME.",
    )
    parser.add_argument(
        "--log-level", choices=sorted(_LOG_LEVELS), default="info", help="log level"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    prov = commands.add_parser("provision", help="create a vault unless one exists")
    prov.add_argument("--vault", type=Path, required=True, help="vault directory")
    prov.add_argument(
        "--domain",
        type=_dns_name,
        action="append",
        required=True,
        help="DNS name of the vault certificate; repeat for more names",
    )
    prov.add_argument(
        "--seed-to",
        type=Path,
        help="also write the vault key, leaf and chain to this PEM file (mode 0600)",
    )

    demo_parser = commands.add_parser(
        "demo", help="show a vault certificate travel through HAProxy to live.pem"
    )
    demo_parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".cache/demo"),
        help="folder for the demo's files, wiped at start (default: .cache/demo)",
    )
    serve = commands.add_parser("gateway", help="serve the vault over ACME")
    serve.add_argument("--vault", type=Path, required=True, help="vault directory")
    serve.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 14000),
        help="loopback HOST:PORT of the HTTPS endpoint (default 127.0.0.1:14000)",
    )
    serve.add_argument(
        "--http01-host",
        type=_loopback_host,
        default="127.0.0.1",
        help="loopback address of the http-01 responder (default 127.0.0.1)",
    )
    serve.add_argument(
        "--http01-port",
        type=_port,
        default=80,
        help="TCP port of the http-01 responder (default 80)",
    )
    return parser


def _run_provision(parser: _Parser, arguments: argparse.Namespace) -> int:
    try:
        vault = provision(arguments.vault, arguments.domain)
        if arguments.seed_to is not None:
            write_seed(vault, arguments.seed_to)
    except VaultError as exc:
        parser.error(f"argument --vault: {exc}")
    except OSError as exc:
        _log.error("provision_failed", vault=str(arguments.vault), error=str(exc))
        return EXIT_FAILURE
    return EXIT_OK


def _run_gateway(parser: _Parser, arguments: argparse.Namespace) -> int:
    try:
        vault = Vault.load(arguments.vault)
    except VaultError as exc:
        parser.error(f"argument --vault: {exc}")

    # Block the stop signals before any thread starts, so every thread
    # inherits the mask and only the sigwait() below receives them.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return _serve(vault, arguments)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _serve(vault: Vault, arguments: argparse.Namespace) -> int:
    host, port = arguments.listen
    try:
        gateway = Gateway(
            vault,
            host,
            port,
            http01_host=arguments.http01_host,
            http01_port=arguments.http01_port,
        )
    except OSError as exc:
        _log.error("gateway_bind_failed", listen=f"{host}:{port}", error=str(exc))
        return EXIT_FAILURE

    print(gateway.directory_url, flush=True)
    waiter = threading.Thread(
        target=_stop_on_signal, args=(gateway,), name="signal-wait", daemon=True
    )
    waiter.start()
    gateway.serve_forever()
    # serve_forever returns while stop() still closes the socket and the
    # validations, so wait for it before the process exits.
    waiter.join()
    return EXIT_OK


def _stop_on_signal(gateway: Gateway) -> None:
    number = signal.sigwait(_STOP_SIGNALS)
    _log.info("signal_received", signal=signal.Signals(number).name)
    gateway.stop()


def _dns_name(text: str) -> str:
    name = text.strip().lower().rstrip(".")
    if not is_dns_name(name):
        raise argparse.ArgumentTypeError(f"invalid DNS name {text!r}")
    return name


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid TCP port {text!r}, expected 1-65535")
    return int(text)


def _loopback_host(text: str) -> str:
    host = text.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid IP address {text!r}") from None
    if not address.is_loopback:
        raise argparse.ArgumentTypeError(f"{text} is not a loopback address")
    return host


def _listen_address(text: str) -> tuple[str, int]:
    host, separator, port_text = text.rpartition(":")
    if not separator or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}, expected HOST:PORT such as 127.0.0.1:14000"
        )
    return _loopback_host(host), int(port_text)
