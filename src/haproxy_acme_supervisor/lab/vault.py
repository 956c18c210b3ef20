"""Provisioning of the lab vault: a lab CA, a stored key and its certificate.

The vault is what the lab gateway serves from. Whatever key a CSR carries,
the gateway returns the leaf stored here, which was issued once, for the vault
key, by the lab CA. A vault directory contains:

- ``ca.pem`` and ``ca.key.pem``: the self-signed lab CA (EC P-384, 10 years).
- ``vault.key.pem``: the stored key (EC P-256).
- ``vault.pem``: the leaf for the vault key (90 days), then the CA.
- ``gateway.pem``: the certificate and key of the gateway's HTTPS endpoint.

Files holding a private key are mode 0600. Every file is written atomically,
so a crash leaves either the old file or the new one, never half of one.
"""

import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haproxy_acme_supervisor.lab.errors import VaultError
from haproxy_acme_supervisor.pem import atomic_write

_log = structlog.get_logger()

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key.pem"
VAULT_KEY_FILE = "vault.key.pem"
VAULT_CERT_FILE = "vault.pem"
GATEWAY_FILE = "gateway.pem"
VAULT_FILES = (CA_FILE, CA_KEY_FILE, VAULT_KEY_FILE, VAULT_CERT_FILE, GATEWAY_FILE)

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=90)
# Back-date notBefore so a client whose clock lags a little still accepts
# a certificate made seconds ago.
CLOCK_SKEW = datetime.timedelta(hours=1)

# One DNS label: letters, digits and inner hyphens, 1 to 63 characters.
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Vault:
    """Paths of the files of one provisioned vault directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The lab CA certificate (PEM)."""
        return self.directory / CA_FILE

    @property
    def ca_key(self) -> Path:
        """The lab CA private key (PEM, mode 0600)."""
        return self.directory / CA_KEY_FILE

    @property
    def vault_key(self) -> Path:
        """The stored private key (PEM, mode 0600)."""
        return self.directory / VAULT_KEY_FILE

    @property
    def vault_cert(self) -> Path:
        """The leaf issued for the stored key, followed by the lab CA (PEM)."""
        return self.directory / VAULT_CERT_FILE

    @property
    def gateway_pem(self) -> Path:
        """The gateway's TLS certificate followed by its key (PEM, mode 0600)."""
        return self.directory / GATEWAY_FILE

    @classmethod
    def load(cls, vault_dir: Path) -> "Vault":
        """Return the vault in ``vault_dir``; a missing file raises VaultError."""
        vault = cls(Path(vault_dir))
        missing = vault.missing_files()
        if missing:
            raise VaultError(
                vault.directory,
                f"not a complete vault, missing {', '.join(missing)}; "
                "run 'provision' on an empty directory",
            )
        return vault

    def missing_files(self) -> list[str]:
        """Return the names of the vault files that do not exist."""
        return [name for name in VAULT_FILES if not (self.directory / name).is_file()]

    def read_leaf(self) -> x509.Certificate:
        """Load the vault leaf, the first certificate of ``vault.pem``."""
        return x509.load_pem_x509_certificates(self.vault_cert.read_bytes())[0]

    def read_public_key(self) -> CertificatePublicKeyTypes:
        """Load the public half of the vault key."""
        key = serialization.load_pem_private_key(
            self.vault_key.read_bytes(), password=None
        )
        public_key = key.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise VaultError(self.vault_key, "the vault key is not an EC key")
        return public_key


def provision(vault_dir: Path, domains: Sequence[str]) -> Vault:
    """Create a vault for ``domains`` in ``vault_dir`` unless one exists there.

    An existing complete vault is returned untouched, even when it was made for
    other domains, so running this twice is safe. A directory that contains only
    some of the vault files raises VaultError rather than being overwritten.
    """
    names = normalize_domains(domains)
    vault = Vault(Path(vault_dir))
    missing = vault.missing_files()

    if not missing:
        _report_existing(vault, names)
        return vault
    if len(missing) != len(VAULT_FILES):
        raise VaultError(
            vault.directory,
            f"incomplete vault, missing {', '.join(missing)}; "
            "remove the directory and provision again",
        )

    vault.directory.mkdir(parents=True, exist_ok=True)
    _create(vault, names)
    _log.info(
        "vault_provisioned",
        vault=str(vault.directory),
        domains=",".join(names),
        serial=format(vault.read_leaf().serial_number, "x"),
    )
    return vault


def write_seed(vault: Vault, path: Path) -> None:
    """Write the vault key, leaf and chain as one PEM file (key first), mode 0600.

    This is the bundle an operator seeds into ``certlocker.acme.pem`` so that
    HAProxy, with ``reuse-key on``, sends CSRs for the vault key.
    """
    bundle = vault.vault_key.read_bytes() + vault.vault_cert.read_bytes()
    atomic_write(Path(path), bundle, PRIVATE_MODE)
    _log.info("vault_seed_written", path=str(path), vault=str(vault.directory))


def normalize_domains(domains: Sequence[str]) -> list[str]:
    """Return the domains lower-cased and deduplicated, or raise ValueError.

    Wildcards are rejected because an http-01 challenge cannot validate them.
    """
    names: list[str] = []
    for domain in domains:
        name = domain.strip().lower().rstrip(".")
        if not is_dns_name(name):
            raise ValueError(f"invalid DNS name {domain!r}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("at least one domain is required")
    return names


def is_dns_name(name: str) -> bool:
    """Return whether ``name`` is a lower-case DNS host name without wildcard."""
    if not name or len(name) > 253:
        return False
    return all(_DNS_LABEL.match(label) for label in name.split("."))


def _report_existing(vault: Vault, names: list[str]) -> None:
    leaf = vault.read_leaf()
    stored = sorted(leaf_dns_names(leaf))
    _log.info("vault_exists", vault=str(vault.directory), domains=",".join(stored))

    if stored != sorted(names):
        _log.warning(
            "vault_domains_differ",
            vault=str(vault.directory),
            stored=",".join(stored),
            requested=",".join(names),
        )
    if leaf.not_valid_after_utc < _now():
        _log.warning(
            "vault_certificate_expired",
            vault=str(vault.directory),
            not_after=leaf.not_valid_after_utc.isoformat(),
        )


def _create(vault: Vault, names: list[str]) -> None:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _make_ca(ca_key)
    vault_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _make_leaf(ca_key, ca_cert, vault_key.public_key(), names)
    gateway_key = ec.generate_private_key(ec.SECP256R1())
    gateway_cert = _make_gateway_cert(ca_key, ca_cert, gateway_key.public_key())

    # ca.pem is written last: its absence marks a vault that was never finished.
    atomic_write(vault.ca_key, _key_pem(ca_key), PRIVATE_MODE)
    atomic_write(vault.vault_key, _key_pem(vault_key), PRIVATE_MODE)
    atomic_write(vault.vault_cert, _cert_pem(leaf) + _cert_pem(ca_cert), PUBLIC_MODE)
    gateway_bundle = _cert_pem(gateway_cert) + _key_pem(gateway_key)
    atomic_write(vault.gateway_pem, gateway_bundle, PRIVATE_MODE)
    atomic_write(vault.ca_cert, _cert_pem(ca_cert), PUBLIC_MODE)


def _make_ca(ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "haproxy-acme-supervisor"),
            x509.NameAttribute(NameOID.COMMON_NAME, "haproxy-acme-supervisor lab CA"),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        _builder(name, ca_key.public_key(), CA_LIFETIME)
        .issuer_name(name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
    )
    return builder.sign(ca_key, hashes.SHA384())


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    names: list[str],
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans = x509.SubjectAlternativeName([x509.DNSName(name) for name in names])
    builder = _end_entity_builder(subject, public_key, ca_cert, LEAF_LIFETIME)
    return builder.add_extension(sans, critical=False).sign(ca_key, hashes.SHA384())


def _make_gateway_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
) -> x509.Certificate:
    # HAProxy's HTTP client matches the directory host against the DNS SANs
    # and the CN only, so the CN must be the literal IP of the directory URL.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    sans = x509.SubjectAlternativeName(
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.DNSName("localhost"),
        ]
    )
    builder = _end_entity_builder(subject, public_key, ca_cert, CA_LIFETIME)
    return builder.add_extension(sans, critical=False).sign(ca_key, hashes.SHA384())


def _end_entity_builder(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_cert: x509.Certificate,
    lifetime: datetime.timedelta,
) -> x509.CertificateBuilder:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        _builder(subject, public_key, lifetime)
        .issuer_name(ca_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski.value
            ),
            critical=False,
        )
    )


def _builder(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    lifetime: datetime.timedelta,
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )


def leaf_dns_names(leaf: x509.Certificate) -> list[str]:
    """Return the DNS names in the certificate's SubjectAlternativeName."""
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return sans.value.get_values_for_type(x509.DNSName)


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
