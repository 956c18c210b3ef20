"""Command line: ``haproxy-acme-supervisor run`` and the lab tools."""

import argparse
import os
import sys

import structlog

from . import __version__, logs
from .config import load_settings
from .errors import ConfigError, ExitCode
from .signals import block_signals

log = structlog.get_logger("cli")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit code."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["run"]:
        block_signals()
    if arguments[:1] == ["lab"]:
        from .lab.cli import main as lab_main

        return lab_main(arguments[1:])

    parser = argparse.ArgumentParser(
        prog="haproxy-acme-supervisor",
        description=(
            "Run HAProxy with its ACME client, validate every certificate it "
            "stages, and serve and persist only validated ones. Settings come "
            "from environment variables; see the README."
        ),
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run as the container's entrypoint (PID 1)")
    commands.add_parser("lab", help="lab CA tools: provision a vault, run the gateway")
    parsed = parser.parse_args(arguments)

    logs.configure()
    if parsed.command == "run":
        return run_command()
    return ExitCode.USAGE


def run_command() -> int:
    """Validate the environment and run the supervisor."""
    from .supervisor import run

    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        log.error("invalid_configuration", error=str(exc), variable=exc.variable)
        return ExitCode.CONFIG_ERROR
    return run(settings)
