"""The lab proof: a vault certificate travels through HAProxy into live.pem.

``python -m haproxy_acme_supervisor.lab demo`` provisions a lab vault for
``lab.local``, seeds ``certlocker.acme.pem`` with the vault's key, runs the
gateway and the supervisor (which runs HAProxy) on free loopback ports, waits
for the promotion, prints the evidence, and stops everything with SIGTERM.
Everything lives in one state folder that is wiped at the start of each run.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from haproxy_acme_supervisor.lab.vault import Vault, provision, write_seed
from haproxy_acme_supervisor.pem import fingerprint, read_bundle

DOMAIN = "lab.local"
PROMOTION_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0


class DemoError(Exception):
    """A step of the demo failed; the message names the step."""


@dataclass
class _Child:
    """A process of the demo with its output in a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        compiled = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = compiled.search(self.output())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise DemoError(
            f"{self.name} did not log /{pattern}/ (see {self.log_path}):\n"
            + "\n".join(self.output().splitlines()[-15:])
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.wait()
            raise DemoError(
                f"{self.name} ignored SIGTERM for {STOP_TIMEOUT_SECONDS} s"
            ) from exc


def main(state_dir: Path) -> int:
    """Run the demo in ``state_dir``; returns 0 when every proof holds."""
    children: list[_Child] = []
    try:
        _run(state_dir, children)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for child in reversed(children):
            child.process.kill()
            child.process.wait()
        return 1
    return 0


def _run(state_dir: Path, children: list[_Child]) -> None:
    state_dir = state_dir.resolve()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    cert_dir = state_dir / "certs"
    cert_dir.mkdir(parents=True, mode=0o700)

    _title("Provisioning the lab vault")
    vault = provision(state_dir / "vault", [DOMAIN])
    write_seed(vault, cert_dir / "certlocker.acme.pem")
    print(f"vault certificate for {DOMAIN} and its key seeded into {cert_dir}")

    http_port, https_port, gateway_port = _free_ports(3)
    gateway = _spawn(
        "gateway",
        [
            sys.executable,
            "-u",
            "-m",
            "haproxy_acme_supervisor.lab",
            "gateway",
            "--vault",
            str(vault.directory),
            "--listen",
            f"127.0.0.1:{gateway_port}",
            "--http01-port",
            str(http_port),
        ],
        state_dir,
        os.environ,
        children,
    )
    directory_url = gateway.wait_for(r"^(https://\S+/directory)$", 30).group(1)

    _title("Starting the supervisor (it starts HAProxy and orders)")
    started = time.monotonic()
    supervisor = _spawn(
        "supervisor",
        [sys.executable, "-u", "-m", "haproxy_acme_supervisor", "run"],
        state_dir,
        _supervisor_env(state_dir, vault, directory_url, http_port, https_port),
        children,
    )
    promoted = supervisor.wait_for(
        r"^.*event='cert_promoted'.*$", PROMOTION_TIMEOUT_SECONDS
    )
    elapsed = time.monotonic() - started

    _report(vault, supervisor, gateway, promoted.group(0), cert_dir, https_port)
    print(f"\nfrom supervisor start to promotion: {elapsed:.1f} s")

    _title("Stopping with SIGTERM")
    for child in (supervisor, gateway):
        code = child.stop()
        print(f"{child.name} exited with code {code}")
        if code != 0:
            raise DemoError(f"{child.name} exited with code {code}, expected 0")


def _report(
    vault: Vault,
    supervisor: _Child,
    gateway: _Child,
    promotion: str,
    cert_dir: Path,
    https_port: int,
) -> None:
    _title("Lab proof")
    seeded = supervisor.wait_for(r"ACME reusable key public sha256: ([0-9a-f]+)", 1)
    csr = gateway.wait_for(r"^.*finalize_csr_public_sha256='?([0-9a-f]+).*$", 1)
    success = supervisor.wait_for(r"^.*Successful update of the certificate.*$", 1)
    print(f"seeded key, public sha256:   {seeded.group(1)}")
    print(f"CSR at finalize, sha256:     {csr.group(1)}")
    if seeded.group(1) != csr.group(1):
        raise DemoError("the CSR does not carry the seeded key")
    print("the CSR carries the seeded key: yes")
    print(f"HAProxy:   {success.group(0).strip()}")
    print(f"promotion: {promotion.strip()}")

    served = _handshake(https_port, vault.ca_cert)
    live = read_bundle(cert_dir / "live.pem").leaf
    if live is None or fingerprint(live) != fingerprint(served):
        raise DemoError("live.pem on disk differs from the certificate served")
    print(f"\nserved on 127.0.0.1:{https_port} for SNI {DOMAIN}:")
    print(f"  subject: {served.subject.rfc4514_string()}")
    print(f"  issuer:  {served.issuer.rfc4514_string()}")
    print(f"  sha256:  {fingerprint(served)}")
    print(f"  verified against the lab CA {vault.ca_cert}: yes")
    print("  identical to live.pem on disk: yes")


def _handshake(port: int, ca_file: Path) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise DemoError(f"TLS handshake on 127.0.0.1:{port} failed: {exc}") from exc
    if der is None:
        raise DemoError(f"127.0.0.1:{port} sent no certificate")
    return x509.load_der_x509_certificate(der)


def _supervisor_env(
    state_dir: Path, vault: Vault, directory_url: str, http_port: int, https_port: int
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HAPROXY_BIN=_haproxy_binary(),
        CERT_DIR=str(state_dir / "certs"),
        RUN_DIR=str(state_dir / "run"),
        ACME_DIRECTORY=directory_url,
        ACME_DOMAINS=DOMAIN,
        ACME_CONTACT=f"admin@{DOMAIN}",
        ACME_CA_FILE=str(vault.ca_cert),
        HTTP_BIND=f"127.0.0.1:{http_port}",
        HTTPS_BIND=f"127.0.0.1:{https_port}",
    )
    return env


def _haproxy_binary() -> str:
    """HAPROXY_BIN, else the haproxy beside this Python (the project's venv)."""
    configured = os.environ.get("HAPROXY_BIN")
    if configured:
        return configured
    beside = Path(sys.executable).parent / "haproxy"
    return str(beside) if beside.exists() else "haproxy"


def _spawn(
    name: str,
    argv: list[str],
    state_dir: Path,
    env: "os._Environ[str] | dict[str, str]",
    children: list[_Child],
) -> _Child:
    log_path = state_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=dict(env)
        )
    child = _Child(name, process, log_path)
    children.append(child)
    return child


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _title(text: str) -> None:
    print(f"\n== {text}", flush=True)
