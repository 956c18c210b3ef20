"""A full ACME order from a real HAProxy against the lab gateway.

HAProxy comes from the suite's ``haproxy_bin`` fixture. HAProxy waits
about five seconds after the challenge and again after finalize, so the test
takes some 15 seconds.
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haproxy_acme_supervisor.lab.gateway import Gateway
from haproxy_acme_supervisor.lab.vault import (
    PRIVATE_MODE,
    Vault,
    provision,
    write_seed,
)
from haproxy_acme_supervisor.pem import atomic_write, public_key_sha256

REPOSITORY = Path(__file__).resolve().parents[2]
CERT = "@certlocker-certs/certlocker"
SUCCESS = f"acme: {CERT}: Successful update of the certificate."
# Seconds allowed for the whole order. HAProxy 3.2.26 took about 12 here.
ORDER_TIMEOUT = 60.0

CONFIG = """\
global
    expose-experimental-directives
    log stderr format raw local0 notice
    stats socket {work}/admin.sock level admin mode 600
    httpclient.ssl.ca-file {ca_file}

acme lab
    directory {directory}
    account-key {work}/acme.account.key
    contact admin@lab.local
    challenge HTTP-01
    keytype ECDSA
    curves P-384
    map virt@acme
    reuse-key on

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

crt-store certlocker-certs
    load crt {work}/certlocker.acme.pem alias certlocker acme lab domains lab.local

frontend http
    bind 127.0.0.1:{http_port}
    http-request return status 200 content-type text/plain lf-string \
"%[path,field(-1,/)].%[path,field(-1,/),map(virt@acme)]" \
if {{ path_beg /.well-known/acme-challenge/ }}
"""

pytestmark = pytest.mark.integration


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_account_key(path: Path) -> None:
    """Write an EC P-384 account key whose x and y both fill 48 bytes.

    HAProxy strips leading zero bytes from the JWK coordinates, which the
    gateway rejects as RFC 7518 requires, so the key must have none.
    """
    while True:
        key = ec.generate_private_key(ec.SECP384R1())
        point = key.public_key().public_numbers()
        if point.x.bit_length() > 376 and point.y.bit_length() > 376:
            break
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, PRIVATE_MODE)


def runtime_command(socket_path: Path, command: str) -> str:
    """Send one command to the HAProxy runtime API and return its output."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(socket_path))
        connection.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def wait_for(path: Path, timeout: float = 10.0) -> None:
    """Wait until ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def lab(tmp_path: Path) -> Vault:
    """A vault, its seed as certlocker.acme.pem and an account key."""
    vault = provision(tmp_path / "vault", ["lab.local"])
    write_seed(vault, tmp_path / "certlocker.acme.pem")
    write_account_key(tmp_path / "acme.account.key")
    return vault


@pytest.fixture
def haproxy_with_gateway(
    haproxy_bin: Path, lab: Vault, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Gateway]]:
    """A running gateway and an HAProxy whose acme section points at it."""
    http_port = free_port()
    gateway = Gateway(lab, http01_port=http_port)
    gateway.start()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        CONFIG.format(
            work=tmp_path,
            ca_file=lab.ca_cert,
            directory=gateway.directory_url,
            http_port=http_port,
        )
    )
    log_file = (tmp_path / "haproxy.log").open("wb")
    process = subprocess.Popen(
        [str(haproxy_bin), "-f", str(config)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(tmp_path / "admin.sock")
        yield process, gateway
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        log_file.close()
        gateway.stop()


def wait_for_success(log_path: Path) -> str:
    """Wait until HAProxy logs a successful update, then return its log."""
    deadline = time.monotonic() + ORDER_TIMEOUT
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if SUCCESS in text:
            return text
        time.sleep(0.2)
    return log_path.read_text(errors="replace")


def test_haproxy_order_stages_vault_certificate(
    haproxy_with_gateway: tuple[subprocess.Popen[bytes], Gateway],
    lab: Vault,
    tmp_path: Path,
) -> None:
    """HAProxy completes an order and stages the vault leaf with the seeded key."""
    _, gateway = haproxy_with_gateway
    admin = tmp_path / "admin.sock"

    with structlog.testing.capture_logs() as events:
        runtime_command(admin, f"acme renew {CERT}")
        log = wait_for_success(tmp_path / "haproxy.log")
    staged = runtime_command(admin, f"dump ssl cert {CERT}").encode()

    staged_key = serialization.load_pem_private_key(staged, None)
    staged_leaf = x509.load_pem_x509_certificates(staged)[0]
    vault_leaf = x509.load_pem_x509_certificates(lab.vault_cert.read_bytes())[0]
    vault_hash = public_key_sha256(lab.read_public_key())
    finalized = [e for e in events if e["event"] == "finalize_csr"]

    assert SUCCESS in log
    assert gateway.authority.stats() == {
        "accounts": 1,
        "orders": 1,
        "finalized": 1,
        "certificates": 1,
    }
    assert staged_leaf.fingerprint(hashes.SHA256()) == vault_leaf.fingerprint(
        hashes.SHA256()
    )
    assert public_key_sha256(staged_key.public_key()) == vault_hash
    assert len(finalized) == 1
    assert finalized[0]["finalize_csr_public_sha256"] == vault_hash
