"""Running real processes in tests: HAProxy, the supervisor, the lab gateway.

Each process writes its output to a file under the test's temporary folder, so
a failing test can show it, and is stopped by its own PID.
"""

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ManagedProcess:
    """A child process whose combined output is kept in a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=new_session,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until the output matches ``pattern``; fail with the output if not."""
        compiled = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = compiled.search(self.output())
            if match:
                return match
            if self.process.poll() is not None:
                match = compiled.search(self.output())
                if match:
                    return match
                raise AssertionError(
                    f"process exited with {self.process.returncode} before "
                    f"/{pattern}/ appeared:\n{self.output()[-6000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"/{pattern}/ did not appear in {timeout} s:\n{self.output()[-6000:]}"
        )

    def signal(self, signal_number: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal_number)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Send SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


def python_module_argv(module: str, *arguments: str) -> list[str]:
    return [sys.executable, "-u", "-m", module, *arguments]


def served_certificate(
    port: int, server_name: str, ca_file: Path | None = None
) -> x509.Certificate:
    """Complete a TLS handshake on 127.0.0.1:``port`` and return the leaf.

    With ``ca_file`` the chain is verified against it and the host name is
    checked; without, any certificate is accepted.
    """
    context = ssl.create_default_context()
    if ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def certificate_sha256(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


@dataclass
class SupervisorRun:
    """Folders, ports and processes of one end-to-end run of the supervisor.

    Subclasses name the CA: ``ca_environment`` returns the variables that
    point the supervisor at it.
    """

    root: Path
    haproxy_bin: Path
    http_port: int = field(default_factory=free_port, kw_only=True)
    https_port: int = field(default_factory=free_port, kw_only=True)
    processes: list[ManagedProcess] = field(default_factory=list, kw_only=True)

    @property
    def cert_dir(self) -> Path:
        return self.root / "certs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def ca_environment(self) -> dict[str, str]:
        raise NotImplementedError

    def supervisor_env(self, **overrides: str) -> dict[str, str]:
        """The supervisor's environment; an override set to "" removes a variable."""
        env = dict(os.environ)
        env.update(
            HAPROXY_BIN=str(self.haproxy_bin),
            CERT_DIR=str(self.cert_dir),
            RUN_DIR=str(self.run_dir),
            HTTP_BIND=f"127.0.0.1:{self.http_port}",
            HTTPS_BIND=f"127.0.0.1:{self.https_port}",
            STOP_GRACE_SECONDS="5",
        )
        env.update(self.ca_environment())
        for name, value in overrides.items():
            if value == "":
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def start_supervisor(
        self, name: str = "supervisor", **overrides: str
    ) -> ManagedProcess:
        """Start ``haproxy-acme-supervisor run`` with its log in ``name``.log."""
        return self.start(
            name,
            python_module_argv("haproxy_acme_supervisor", "run"),
            env=self.supervisor_env(**overrides),
        )

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(argv, self.root / f"{name}.log", env=env)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
