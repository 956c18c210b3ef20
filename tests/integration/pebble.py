"""Pebble, Let's Encrypt's ACME test server, and a supervisor ordering from it.

``pebble-challtestsrv`` serves DNS only: it returns 127.0.0.1 for every A
query and no AAAA record, so Pebble's own name (``pebble.test``) and the
names ordered for (``shop.pebble.test``) all lead to loopback. HAProxy's HTTP
client resolves the directory's host through it (``ACME_RESOLVER``), and Pebble
resolves the ordered name through it before it fetches the http-01 token from
the supervisor's HTTP port for real.

Pebble serves HTTPS with a certificate for ``pebble.test`` signed by a test CA
made here, which the supervisor gets as ``ACME_CA_FILE``, so HAProxy verifies
the directory's certificate in every test that does not turn verification off.
Pebble generates a new root and intermediate for the certificates it issues at
every start; ``root_certificate`` fetches that root from its management port.
"""

import datetime
import json
import os
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haproxy_acme_supervisor.pem import PemBundle, fingerprint

from ..certificates import (
    Issued,
    bundle_pem,
    certificate_pem,
    key_pem,
    make_ca,
    make_leaf,
    new_key,
)
from ..conftest import VENV_BIN
from ..harness import (
    ManagedProcess,
    SupervisorRun,
    free_port,
    served_certificate,
)

PEBBLE_BIN = VENV_BIN / "pebble"
CHALLTESTSRV_BIN = VENV_BIN / "pebble-challtestsrv"
PEBBLE_HOST = "pebble.test"
PEBBLE_DOMAIN = "shop.pebble.test"
# Pebble logs one line per request; a line for /order-plz is one new-order
# request that reached the CA, whether or not it created an order.
_ORDER_REQUEST = re.compile(r"POST /order-plz ")
_ISSUED_SERIAL = re.compile(r"Issued certificate serial ([0-9a-f]+) for order")


@dataclass
class Pebble:
    """A running Pebble and the DNS server it and HAProxy resolve names with."""

    root: Path
    http01_port: int
    tls_ca: Issued
    listen_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    dns_management_port: int = field(default_factory=free_port)
    server: ManagedProcess | None = None
    dns: ManagedProcess | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{PEBBLE_HOST}:{self.listen_port}/dir"

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    @property
    def tls_ca_file(self) -> Path:
        """The test CA that signed Pebble's HTTPS certificate."""
        return self.root / "pebble-tls-ca.pem"

    def start(self, environment: Mapping[str, str]) -> None:
        """Start the DNS server, then Pebble with ``environment`` added to its own."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.dns = ManagedProcess(self._dns_argv(), self.root / "challtestsrv.log")
        self.dns.wait_for(r"Starting management server", timeout=30)

        config = self._write_config()
        env = dict(os.environ)
        env.update(environment)
        self.server = ManagedProcess(
            [
                str(PEBBLE_BIN),
                "-config",
                str(config),
                "-dnsserver",
                self.resolver,
            ],
            self.root / "pebble.log",
            env=env,
        )
        self.server.wait_for(r"ACME directory available at", timeout=30)

    def output(self) -> str:
        assert self.server is not None
        return self.server.output()

    def order_requests(self) -> int:
        """Count the new-order requests Pebble has received so far."""
        return len(_ORDER_REQUEST.findall(self.output()))

    def issued_serials(self) -> list[str]:
        """Serials (lower-case hex, no leading zeros) Pebble has issued."""
        return [serial.lstrip("0") for serial in _ISSUED_SERIAL.findall(self.output())]

    def root_certificate(self) -> x509.Certificate:
        """Fetch the root Pebble signs with from its management port."""
        context = ssl.create_default_context(cafile=str(self.tls_ca_file))
        # urllib checks the certificate against the URL's host, 127.0.0.1, but
        # the certificate names pebble.test. The chain is still verified.
        context.check_hostname = False
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return x509.load_pem_x509_certificate(response.read())

    def _dns_argv(self) -> list[str]:
        return [
            str(CHALLTESTSRV_BIN),
            "-defaultIPv4",
            "127.0.0.1",
            # No AAAA record, because HAProxy listens on 127.0.0.1 only.
            "-defaultIPv6",
            "",
            "-dnsserver",
            self.resolver,
            "-management",
            f"127.0.0.1:{self.dns_management_port}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-doh",
            "",
        ]

    def _write_config(self) -> Path:
        """Write Pebble's HTTPS key pair and its JSON configuration."""
        now = datetime.datetime.now(datetime.UTC)
        # HAProxy's HTTP client checks the directory's host against the DNS
        # names of this certificate.
        tls = make_leaf(self.tls_ca, [PEBBLE_HOST], now=now)
        certificate = self.root / "pebble-tls.pem"
        key = self.root / "pebble-tls.key"
        certificate.write_bytes(certificate_pem(tls.certificate))
        key.write_bytes(key_pem(tls.key))
        self.tls_ca_file.write_bytes(certificate_pem(self.tls_ca.certificate))

        settings = {
            "listenAddress": f"127.0.0.1:{self.listen_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(certificate),
            "privateKey": str(key),
            # Pebble fetches http-01 tokens from this port of the ordered name.
            "httpPort": self.http01_port,
            # No test uses tls-alpn-01, but Pebble needs the port set.
            "tlsPort": free_port(),
        }
        path = self.root / "pebble-config.json"
        path.write_text(json.dumps({"pebble": settings}, indent=2))
        return path


@dataclass
class PebbleLab(SupervisorRun):
    """A run against Pebble, which issues from each CSR as Let's Encrypt does."""

    pebble: Pebble | None = None

    @property
    def live_path(self) -> Path:
        return self.cert_dir / "live.pem"

    def start_pebble(self, **environment: str) -> Pebble:
        """Start Pebble without random validation delays or nonce rejections.

        Pebble rejects 5% of valid nonces by default, and each rejection costs
        an HAProxy retry of 3 s or more, so the default here is 0 and a test of
        rejections sets ``PEBBLE_WFE_NONCEREJECT`` itself.
        """
        settings = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        settings.update(environment)
        tls_ca = make_ca(
            "Pebble HTTPS test CA", now=datetime.datetime.now(datetime.UTC)
        )
        self.pebble = Pebble(self.root / "pebble", self.http_port, tls_ca)
        try:
            self.pebble.start(settings)
        finally:
            for process in (self.pebble.dns, self.pebble.server):
                if process is not None:
                    self.processes.append(process)
        return self.pebble

    def seed(self) -> PemBundle:
        """Seed the staging file with a new key and a self-signed certificate.

        This is what an operator does for Let's Encrypt: any key of their own,
        with a certificate that names the domain so HAProxy loads it.
        """
        self.cert_dir.mkdir(mode=0o700, exist_ok=True)
        key = new_key()
        bundle = PemBundle(key, (self_signed(key, PEBBLE_DOMAIN),))
        path = self.cert_dir / "certlocker.acme.pem"
        path.write_bytes(bundle.to_pem())
        path.chmod(0o600)
        return bundle

    def write_live(self, bundle: bytes) -> None:
        """Replace live.pem, as a previous run would have left it."""
        self.cert_dir.mkdir(mode=0o700, exist_ok=True)
        self.live_path.write_bytes(bundle)
        self.live_path.chmod(0o600)

    def ca_environment(self) -> dict[str, str]:
        assert self.pebble is not None, "start_pebble() first"
        return {
            "ACME_DIRECTORY": self.pebble.directory_url,
            "ACME_DOMAINS": PEBBLE_DOMAIN,
            "ACME_CONTACT": "admin@pebble.test",
            "ACME_RESOLVER": self.pebble.resolver,
            "ACME_CA_FILE": str(self.pebble.tls_ca_file),
        }


def self_signed(key: ec.EllipticCurvePrivateKey, domain: str) -> x509.Certificate:
    """Create a self-signed certificate for ``domain``, valid 30 days from now."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class CraftedLive:
    """A live bundle from a test CA: PEM text, its leaf and the root above it."""

    pem: bytes
    leaf: x509.Certificate
    root: x509.Certificate


def craft_live(
    domain: str,
    *,
    not_after: datetime.datetime,
    lifetime: datetime.timedelta = datetime.timedelta(days=90),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CraftedLive:
    """Create key, leaf and intermediate for ``domain``, as a CA would issue them.

    Pass the seeded ``key`` to stand for a certificate ordered with key reuse.
    """
    now = datetime.datetime.now(datetime.UTC)
    root = make_ca("Live test root CA", now=now)
    intermediate = make_ca("Live test intermediate CA", issuer=root, now=now)
    leaf = make_leaf(
        intermediate,
        [domain],
        not_before=not_after - lifetime,
        not_after=not_after,
        key=key,
    )
    pem = bundle_pem(leaf.key, leaf.certificate, intermediate.certificate)
    return CraftedLive(pem, leaf.certificate, root.certificate)


@dataclass(frozen=True)
class FirstHandshake:
    """The leaf of the first completed handshake and the attempts that failed."""

    leaf: x509.Certificate
    failed_attempts: int


def first_handshake(port: int, server_name: str, timeout: float) -> FirstHandshake:
    """Connect in a tight loop until a TLS handshake completes.

    Any failure before that (refused connection, reset, failed handshake) is
    retried after 5 ms, so the loop can start before the port is open.
    """
    deadline = time.monotonic() + timeout
    failed_attempts = 0
    while True:
        try:
            leaf = served_certificate(port, server_name)
        except OSError:
            if time.monotonic() > deadline:
                raise
            failed_attempts += 1
            time.sleep(0.005)
        else:
            return FirstHandshake(leaf, failed_attempts)


class HandshakeProbe(threading.Thread):
    """A thread that completes verified TLS handshakes at an interval.

    It records the distinct leaf fingerprints in the order they were first
    served, and every failed handshake. It runs until ``stop`` is called or
    ``max_seconds`` have passed.
    """

    def __init__(
        self,
        port: int,
        server_name: str,
        ca_file: Path,
        *,
        interval: float = 0.05,
        max_seconds: float = 120.0,
    ) -> None:
        super().__init__(name="handshake-probe", daemon=True)
        self.port = port
        self.server_name = server_name
        self.ca_file = ca_file
        self.interval = interval
        self.max_seconds = max_seconds
        self.handshakes = 0
        self.fingerprints: list[str] = []
        self.failures: list[str] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                leaf = served_certificate(self.port, self.server_name, self.ca_file)
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                self.handshakes += 1
                sha256 = fingerprint(leaf)
                if sha256 not in self.fingerprints:
                    self.fingerprints.append(sha256)
            self._stopping.wait(self.interval)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)
