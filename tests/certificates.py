"""Keys and certificates built in code for the tests; none is checked in.

``make_chain`` returns a root CA, an intermediate CA and a leaf, which is what
an ACME CA returns. Leaves can be expired, not yet valid, carry wildcard names,
be CAs, carry other extended key usages or be paired with a key that is not
theirs. ``self_signed_pair`` wraps any key type, including those HAProxy
cannot use.
"""

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH,)

# A fixed instant for tests that pass ``now`` explicitly.
NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)

# P-384 private scalars whose public point has a coordinate shorter than 48
# bytes. Found once by trying 1, 2, 3, ... with pem.short_coordinate.
SHORT_Y_SCALAR = 176
SHORT_X_SCALAR = 197


@dataclass(frozen=True)
class Issued:
    """A certificate and the private key of its subject."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


@dataclass(frozen=True)
class Chain:
    """A leaf with the intermediate that signed it and the root above that."""

    root: Issued
    intermediate: Issued
    leaf: Issued

    def bundle_pem(self) -> bytes:
        """Return key, leaf and intermediate as HAProxy stores a bundle."""
        return bundle_pem(
            self.leaf.key, self.leaf.certificate, self.intermediate.certificate
        )


def new_key() -> ec.EllipticCurvePrivateKey:
    """Generate an EC P-256 key, the fastest type HAProxy serves."""
    return ec.generate_private_key(ec.SECP256R1())


def full_length_key(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    """Generate an EC key on ``curve`` whose coordinates have no leading zero byte.

    On P-521 about every second key has one, and the account key check
    refuses such keys.
    """
    while True:
        key = ec.generate_private_key(curve)
        size = (curve.key_size + 7) // 8
        numbers = key.public_key().public_numbers()
        if all(
            (value.bit_length() + 7) // 8 == size for value in (numbers.x, numbers.y)
        ):
            return key


def short_coordinate_key(scalar: int) -> ec.EllipticCurvePrivateKey:
    """Return the P-384 key for ``scalar`` (use the ``SHORT_*_SCALAR`` values)."""
    return ec.derive_private_key(scalar, ec.SECP384R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(
    common_name: str,
    *,
    issuer: Issued | None = None,
    now: datetime.datetime = NOW,
) -> Issued:
    """Create a CA certificate, self-signed unless ``issuer`` is given."""
    key = new_key()
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - 365 * DAY)
        .not_valid_after(now + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer_key, hashes.SHA256())
    )
    return Issued(key, certificate)


def make_leaf(
    issuer: Issued,
    domains: Sequence[str],
    *,
    now: datetime.datetime = NOW,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    ca: bool = False,
    usages: Sequence[x509.ObjectIdentifier] | None = SERVER_AUTH,
) -> Issued:
    """Create a server certificate for ``domains``, valid 90 days around ``now``.

    ``ca`` sets basicConstraints ca=true; ``usages`` None leaves out the
    extended key usage extension.
    """
    key = key or new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(domains[0] if domains else "no-names"))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - 10 * DAY)
        .not_valid_after(not_after or now + 80 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usages is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(usages)), critical=False
        )
    if domains:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in domains]),
            critical=False,
        )
    return Issued(key, builder.sign(issuer.key, hashes.SHA256()))


def make_chain(
    domains: Sequence[str],
    *,
    now: datetime.datetime = NOW,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Chain:
    """Create root, intermediate and a leaf for ``domains``."""
    root = make_ca("Test Root CA", now=now)
    intermediate = make_ca("Test Intermediate CA", issuer=root, now=now)
    leaf = make_leaf(
        intermediate, domains, now=now, not_before=not_before, not_after=not_after
    )
    return Chain(root, intermediate, leaf)


def key_pem(key: PrivateKeyTypes) -> bytes:
    """Serialise a key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """Serialise a certificate as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def bundle_pem(key: PrivateKeyTypes | None, *certificates: x509.Certificate) -> bytes:
    """Concatenate a key (if any) and certificates, in the order given."""
    parts = [key_pem(key)] if key is not None else []
    parts.extend(certificate_pem(certificate) for certificate in certificates)
    return b"".join(parts)


# Key types HAProxy cannot use, as the boot checks name them.
UNUSABLE_KEYS = ("Ed25519", "EC secp256k1", "RSA 1024-bit")


def unusable_key(description: str) -> PrivateKeyTypes:
    """Generate a key of one of the ``UNUSABLE_KEYS`` types."""
    if description == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if description == "EC secp256k1":
        return ec.generate_private_key(ec.SECP256K1())
    assert description == "RSA 1024-bit"
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def self_signed_pair(key: PrivateKeyTypes, domains: Sequence[str]) -> bytes:
    """Return ``key`` and a self-signed certificate for it, as one PEM file."""
    assert isinstance(
        key,
        ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    )
    signer: CertificateIssuerPrivateKeyTypes = key
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(domains[0]))
        .issuer_name(_name(domains[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 10 * DAY)
        .not_valid_after(NOW + 80 * DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in domains]),
            critical=False,
        )
        .sign(signer, algorithm)
    )
    return bundle_pem(key, certificate)
