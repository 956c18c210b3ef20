"""Errors the supervisor reports, and the exit code each one maps to.

Every error renders as one line that names the file, variable or command at
fault and states what to do. None of them ever carries key material: callers pass
paths, fingerprints and public-key hashes only.
"""

from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Exit codes of ``haproxy-acme-supervisor run``, documented in the README.

    Codes 64 and up follow sysexits.h so they rarely collide with HAProxy's own
    codes, which the supervisor passes through once HAProxy has started.
    """

    OK = 0
    USAGE = 2
    INVALID_CERT_FILE = 65
    SEEDED_KEY_MISMATCH = 66
    HAPROXY_START_FAILED = 69
    INTERNAL_ERROR = 70
    ADMIN_SOCKET_TIMEOUT = 75
    # HAProxy exited with 0 although no stop was requested from the supervisor,
    # for example after a SIGTERM sent to HAProxy's master from outside.
    HAPROXY_STOPPED_OUTSIDE = 76
    DIRECTORY_IN_USE = 77
    CONFIG_ERROR = 78

    @staticmethod
    def for_signal(signal_number: int) -> int:
        """Return the shell's code for a process killed by ``signal_number``."""
        return 128 + signal_number


class SupervisorError(Exception):
    """Root of every error the supervisor reports to the operator."""

    exit_code: int = ExitCode.INTERNAL_ERROR


class ConfigError(SupervisorError):
    """An environment variable or the template is invalid."""

    exit_code = ExitCode.CONFIG_ERROR

    def __init__(self, variable: str, value: str, reason: str) -> None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(f"{variable}={shown!r} is invalid: {reason}")
        self.variable = variable
        self.value = value
        self.reason = reason


class TemplateError(SupervisorError):
    """The HAProxy configuration template failed to render or to pass ``-c``."""

    exit_code = ExitCode.CONFIG_ERROR

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CertFileError(SupervisorError):
    """A key or PEM file in the certificate directory is unusable."""

    exit_code = ExitCode.INVALID_CERT_FILE

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SeededKeyError(CertFileError):
    """The seeded staging file is missing, or its key and certificate disagree."""

    exit_code = ExitCode.SEEDED_KEY_MISMATCH


class HAProxyStartError(SupervisorError):
    """HAProxy is missing, lacks ACME support, or exited before it was ready."""

    exit_code = ExitCode.HAPROXY_START_FAILED


class DirectoryInUseError(SupervisorError):
    """Another supervisor holds the lock on RUN_DIR or CERT_DIR."""

    exit_code = ExitCode.DIRECTORY_IN_USE


class AdminSocketTimeoutError(SupervisorError):
    """HAProxy runs, but its admin socket never accepted a connection."""

    exit_code = ExitCode.ADMIN_SOCKET_TIMEOUT


class RuntimeApiError(SupervisorError):
    """HAProxy's runtime API rejected a command or returned something unexpected."""

    def __init__(self, command: str, response: str) -> None:
        first_line = response.strip().splitlines()[0] if response.strip() else ""
        super().__init__(f"HAProxy rejected '{command}': {first_line or 'no output'}")
        self.command = command
        self.response = response


class BundleRejectedError(SupervisorError):
    """A staged certificate bundle failed validation and must not be promoted."""

    def __init__(self, reason: str, **details: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details
