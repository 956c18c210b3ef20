"""PEM bundles: parsing, key generation, fingerprints and atomic writes.

A bundle is what HAProxy loads from one ``crt`` file and what ``dump ssl cert``
returns: at most one private key and a list of certificates, leaf first. Key
material stays inside ``PemBundle`` objects and the files they are written to;
everything meant for logs is a hash (``public_key_sha256``, ``fingerprint``).
"""

import datetime
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
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


# Largest PEM file read: a key and a long chain take a few kilobytes.
PEM_FILE_LIMIT = 1024 * 1024
# EC curves accepted for the keys HAProxy uses, by OpenSSL name and NIST name.
_HAPROXY_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_MINIMUM_RSA_BITS = 2048
ACCEPTED_KEYS = "RSA of 2048 bits or more, or EC on P-256, P-384 or P-521"


class PemError(ValueError):
    """Text that is not a usable PEM bundle; the message never quotes the input."""


class PemFileError(OSError):
    """A path that is not a regular file, or a file over the size limit.

    It is an ``OSError`` with ``strerror`` set, so callers that report
    ``cannot be read: {strerror}`` for other read errors need no new branch.
    """


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
    return parse_bundle(read_pem_file(path))


def read_pem_file(path: Path, limit: int = PEM_FILE_LIMIT) -> bytes:
    """Return the contents of a regular file of at most ``limit`` bytes.

    Symbolic links are followed, since Kubernetes mounts secrets as links to
    regular files. Anything else (a FIFO, a device, a directory) raises
    ``PemFileError`` before it is opened, so a FIFO cannot block the reader
    and ``/dev/zero`` cannot fill memory. The open is non-blocking and the
    descriptor is checked again, in case the path was swapped after ``stat``.
    Raises ``OSError`` (``FileNotFoundError`` for a missing file or a dangling
    link).
    """
    _check_pem_file(path, os.stat(path), limit)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _check_pem_file(path, os.fstat(descriptor), limit)
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(descriptor)
    if remaining <= 0:
        raise PemFileError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return b"".join(chunks)


def _check_pem_file(path: Path, status: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(status.st_mode), "special file")
        raise PemFileError(errno.EINVAL, f"is a {kind}, not a regular file", str(path))
    if status.st_size > limit:
        raise PemFileError(errno.EFBIG, f"larger than {limit} bytes", str(path))


_FILE_KINDS = {
    stat.S_IFDIR: "directory",
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


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


def key_description(key: PrivateKeyTypes) -> str:
    """Name a private key's type and size or curve, for example ``EC P-256``."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = key.curve.name
        return f"EC {_HAPROXY_CURVES.get(curve, curve)}"
    for kind in (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey):
        if isinstance(key, kind):
            return kind.__name__.removesuffix("PrivateKey")
    if isinstance(key, dsa.DSAPrivateKey):
        return "DSA"
    return type(key).__name__


def unsupported_key(key: PrivateKeyTypes) -> str | None:
    """Say why HAProxy cannot use ``key``, or return None when it can.

    HAProxy loads other keys, such as Ed25519 or secp256k1, without an error
    at start, but its ACME client then fails to sign with them.
    """
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= _MINIMUM_RSA_BITS:
        return None
    if (
        isinstance(key, ec.EllipticCurvePrivateKey)
        and key.curve.name in _HAPROXY_CURVES
    ):
        return None
    return f"the key is {key_description(key)}; HAProxy accepts {ACCEPTED_KEYS}"
