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
