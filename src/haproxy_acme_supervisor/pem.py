"""PEM bundles: parsing, key generation, fingerprints and atomic writes.

A bundle is what HAProxy loads from one ``crt`` file and what ``dump ssl cert``
returns: at most one private key and a list of certificates, leaf first. Key
material stays inside ``PemBundle`` objects and the files they are written to;
everything meant for logs is a hash (``public_key_sha256``, ``fingerprint``).
"""

import datetime
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)
# "ENCRYPTED PRIVATE KEY" (PKCS#8) is listed so that it counts as a key and
# gets the "encrypted" message from the loader.
_KEY_LABELS = {
    b"PRIVATE KEY",
    b"ENCRYPTED PRIVATE KEY",
    b"EC PRIVATE KEY",
    b"RSA PRIVATE KEY",
}
_IGNORED_LABELS = {b"EC PARAMETERS", b"DH PARAMETERS"}


class PemError(ValueError):
    """Text that is not a usable PEM bundle; the message never quotes the input."""


@dataclass(frozen=True)
class PemBundle:
    """A private key (optional) and certificates, leaf first."""

    key: PrivateKeyTypes | None
    certificates: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.certificates[0] if self.certificates else None

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self.certificates[1:]

    def to_pem(self) -> bytes:
        """Serialise as HAProxy's ``dump ssl cert`` does: key, leaf, then chain."""
        parts: list[bytes] = []
        if self.key is not None:
            parts.append(
                self.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        parts.extend(
            cert.public_bytes(serialization.Encoding.PEM) for cert in self.certificates
        )
        return b"".join(parts)


def parse_bundle(data: bytes) -> PemBundle:
    """Parse PEM text into a bundle, accepting LF or CRLF line ends.

    Text between blocks is ignored, as OpenSSL does. Raises ``PemError`` when a
    block is unreadable or has no END line, a key is encrypted, or the text
    contains more than one private key.
    """
    text = data.replace(b"\r\n", b"\n")
    key: PrivateKeyTypes | None = None
    certificates: list[x509.Certificate] = []
    gap_start = 0
    for match in _PEM_BLOCK.finditer(text):
        _check_gap(text[gap_start : match.start()])
        gap_start = match.end()
        label, block = match.group(1), match.group(0)
        if label == b"CERTIFICATE":
            certificates.append(_load_certificate(block))
        elif label in _KEY_LABELS:
            if key is not None:
                raise PemError("contains more than one private key")
            key = _load_private_key(block)
        elif label not in _IGNORED_LABELS:
            raise PemError(f"contains an unexpected PEM block '{label.decode()}'")
    _check_gap(text[gap_start:])
    return PemBundle(key, tuple(certificates))


def _check_gap(text: bytes) -> None:
    """Reject a BEGIN line outside any block, as left by a truncated file."""
    if b"-----BEGIN " in text:
        raise PemError("contains a PEM block without a matching END line")


def read_bundle(path: Path) -> PemBundle:
    """Read and parse a PEM file; raises ``OSError`` or ``PemError``."""
    return parse_bundle(path.read_bytes())


def _load_certificate(block: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(block)
    except ValueError as exc:
        raise PemError("contains a certificate that cannot be decoded") from exc


def _load_private_key(block: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(block, password=None)
    except TypeError as exc:
        raise PemError(
            "contains an encrypted private key; HAProxy needs it unencrypted"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PemError("contains a private key that cannot be decoded") from exc


def public_key_sha256(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """Return the SHA-256 of a key's DER SubjectPublicKeyInfo, as hex.

    This identifies a key pair without revealing it, and is the value to
    compare between a private key, a CSR and a certificate.
    """
    public_key = key.public_key() if hasattr(key, "public_key") else key
    der = public_key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def fingerprint(certificate: x509.Certificate) -> str:
    """Return the certificate's SHA-256 fingerprint as hex."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def serial_hex(certificate: x509.Certificate) -> str:
    """Return the serial number as upper-case hex, as ``show ssl cert`` prints it."""
    return f"{certificate.serial_number:X}"


def dns_names(certificate: x509.Certificate) -> list[str]:
    """Return the certificate's DNS subject alternative names, lower-cased."""
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in extension.value.get_values_for_type(x509.DNSName)]


def covers(names: Iterable[str], domain: str) -> bool:
    """Tell whether certificate ``names`` cover ``domain`` (RFC 6125 section 6.4.3).

    A wildcard name covers exactly one extra leftmost label. A configured
    wildcard domain is covered only by the same wildcard name.
    """
    domain = domain.lower()
    for name in names:
        lowered = name.lower()
        if lowered == domain:
            return True
        if lowered.startswith("*.") and not domain.startswith("*."):
            head, _, rest = domain.partition(".")
            if head and rest == lowered[2:]:
                return True
    return False


def generate_account_key() -> ec.EllipticCurvePrivateKey:
    """Generate an EC P-384 account key whose JWK coordinates are full length.

    HAProxy 3.2 to 3.4 encode the x and y coordinates of an EC account key
    without leading zero bytes, but RFC 7518 section 6.2.1.2 requires their
    full size (48 bytes for P-384), and CAs then reject the account. About one
    random key in 128 has a short coordinate, so such keys are drawn again.
    """
    while True:
        key = ec.generate_private_key(ec.SECP384R1())
        if short_coordinate(key) is None:
            return key


def short_coordinate(key: PrivateKeyTypes) -> str | None:
    """Name the EC coordinate (``x`` or ``y``) that is shorter than the curve size.

    Returns None for a key without the problem, including any non-EC key.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    size = (key.curve.key_size + 7) // 8
    numbers = key.public_key().public_numbers()
    for coordinate, value in (("x", numbers.x), ("y", numbers.y)):
        if (value.bit_length() + 7) // 8 < size:
            return coordinate
    return None


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_self_signed(
    common_name: str,
    domains: Sequence[str],
    *,
    valid_for: datetime.timedelta,
    valid_from: datetime.datetime | None = None,
) -> PemBundle:
    """Create a self-signed EC P-256 certificate and key, for throwaway use.

    Used for ``bootstrap.pem`` (so :443 accepts TLS before any real certificate
    exists) and for the placeholder staging file in lab mode.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = valid_from or datetime.datetime.now(datetime.UTC) - datetime.timedelta(
        minutes=5
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    if domains:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]),
            critical=False,
        )
    signer: CertificateIssuerPrivateKeyTypes = key
    return PemBundle(key, (builder.sign(signer, hashes.SHA256()),))


def is_self_signed(certificate: x509.Certificate) -> bool:
    """Tell whether the certificate names itself as issuer and verifies so."""
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file.

    ``mkstemp`` creates the temporary file with mode 0600 and ``mode`` is set
    before any data is written, so key material is never readable by others,
    not even for an instant. The file is fsynced before the rename and the
    directory after it, so a crash leaves one whole file.
    """
    directory = path.parent
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def is_rsa_or_ec(key: PrivateKeyTypes) -> bool:
    """Tell whether HAProxy can use the key for TLS (RSA or EC)."""
    return isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
