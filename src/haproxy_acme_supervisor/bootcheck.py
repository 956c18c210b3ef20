"""Checks and preparation of the certificate directory before HAProxy starts.

These functions touch only files, never HAProxy, so an operator command can run
them on their own. They create what is missing (account key, bootstrap, live
and, in lab mode, a placeholder staging file) and refuse what is broken. They
never overwrite a file that exists: a broken file stops the start with an error
naming it, and the operator decides what to do with it.
"""

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .config import CertPaths, Settings
from .errors import CertFileError, SeededKeyError
from .pem import (
    PemBundle,
    PemError,
    atomic_write,
    fingerprint,
    generate_account_key,
    make_self_signed,
    private_key_pem,
    public_key_sha256,
    read_bundle,
    read_pem_file,
    short_coordinate,
    unsupported_key,
)

log = structlog.get_logger("bootcheck")

BOOTSTRAP_COMMON_NAME = "haproxy-acme-supervisor bootstrap"
PLACEHOLDER_COMMON_NAME = "haproxy-acme-supervisor placeholder"
BOOTSTRAP_LIFETIME = datetime.timedelta(days=365)
# The placeholder expires within a day, so HAProxy's scheduler renews it soon
# even if the first order fails.
PLACEHOLDER_LIFETIME = datetime.timedelta(days=1)


@dataclass(frozen=True)
class BootReport:
    """Results of the boot checks, as values safe to log."""

    account_key_sha256: str
    bootstrap_fingerprint: str
    live_fingerprint: str
    seeded_key_sha256: str | None
    placeholder_fingerprint: str | None


def prepare_cert_dir(settings: Settings) -> BootReport:
    """Create or check every file in the certificate directory, in boot order.

    Raises ``CertFileError`` (or ``SeededKeyError``) naming the first file
    that stops the start.
    """
    paths = settings.paths
    _ensure_directory(paths.cert_dir)
    account_key_sha256 = ensure_account_key(paths.account_key)
    bootstrap = ensure_bootstrap(paths.bootstrap, settings.domains)
    live = ensure_live(paths, bootstrap)

    seeded_key_sha256 = None
    placeholder_fingerprint = None
    if settings.require_seeded_key:
        seeded_key_sha256 = check_seeded(paths.staged)
    else:
        placeholder_fingerprint = ensure_staged_placeholder(
            paths.staged, settings.domains
        )

    return BootReport(
        account_key_sha256=account_key_sha256,
        bootstrap_fingerprint=_leaf_fingerprint(bootstrap),
        live_fingerprint=_leaf_fingerprint(live),
        seeded_key_sha256=seeded_key_sha256,
        placeholder_fingerprint=placeholder_fingerprint,
    )


def ensure_account_key(path: Path) -> str:
    """Create the ACME account key if absent, or check the existing one.

    Returns the SHA-256 of its public key. HAProxy would create a missing key
    itself, but with mode 0644, and possibly with a short EC coordinate that
    CAs reject (see ``pem.generate_account_key``).
    """
    if not _exists(path, CertFileError):
        key = generate_account_key()
        _write_secret(path, private_key_pem(key))
        log.info("account_key_created", path=str(path), key_type="EC P-384")
        return public_key_sha256(key)

    try:
        existing = serialization.load_pem_private_key(
            read_pem_file(path), password=None
        )
    except OSError as exc:
        raise CertFileError(path, f"cannot be read: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertFileError(
            path,
            "is not an unencrypted PEM private key; move it away to have a new "
            "account key created at the next start",
        ) from exc

    problem = unsupported_key(existing)
    if problem is not None:
        raise CertFileError(
            path,
            f"{problem}; move it away to have a new account key created at the "
            "next start (the CA then sees a new account)",
        )
    coordinate = short_coordinate(existing)
    if coordinate is not None:
        raise CertFileError(
            path,
            f"the EC public key's {coordinate} coordinate has a leading zero byte, "
            "which HAProxy drops when it sends the key, so the CA rejects the "
            "account; move the file away to have a new key created at the next "
            "start (the CA then sees a new account)",
        )
    _restrict_mode(path)
    sha256 = public_key_sha256(existing)
    log.info("account_key_found", path=str(path), public_key_sha256=sha256)
    return sha256


def ensure_bootstrap(path: Path, domains: tuple[str, ...]) -> PemBundle:
    """Create the throwaway self-signed ``bootstrap.pem`` if absent; return it."""
    if _exists(path, CertFileError):
        bundle = _read_pair(path)
        log.info("bootstrap_found", path=str(path), sha256=_leaf_fingerprint(bundle))
        return bundle

    bundle = make_self_signed(
        BOOTSTRAP_COMMON_NAME, domains, valid_for=BOOTSTRAP_LIFETIME
    )
    _write_secret(path, bundle.to_pem())
    log.info("bootstrap_created", path=str(path), sha256=_leaf_fingerprint(bundle))
    return bundle


def ensure_live(paths: CertPaths, bootstrap: PemBundle) -> PemBundle:
    """Seed ``live.pem`` from the bootstrap on first run; keep it afterwards."""
    if _exists(paths.live, CertFileError):
        bundle = _read_pair(paths.live)
        log.info("live_found", path=str(paths.live), sha256=_leaf_fingerprint(bundle))
        return bundle

    _write_secret(paths.live, bootstrap.to_pem())
    log.info(
        "live_seeded_from_bootstrap",
        path=str(paths.live),
        sha256=_leaf_fingerprint(bootstrap),
    )
    return bootstrap


def check_seeded(path: Path) -> str:
    """Check that the seeded staging file's key belongs to its certificate.

    With ``reuse-key on`` HAProxy puts this key into every CSR. A vault-style
    CA returns the certificate it stored for its own key, whatever the CSR
    contains, so a key that does not match would make every renewal unusable.
    Returns the SHA-256 of the key's public key, which is printed for operators
    to compare with the vault's.
    """
    action = (
        "seed it with the private key the CA's vault stores and the certificate "
        "issued for that key (one PEM file, key and certificate), or set "
        "CERTLOCKER_ACME_REQUIRE_SEEDED_KEY=0 in CI or a lab"
    )
    if not _exists(path, SeededKeyError):
        raise SeededKeyError(path, f"missing; {action}")
    try:
        bundle = read_bundle(path)
    except OSError as exc:
        raise SeededKeyError(path, f"cannot be read: {exc.strerror}") from exc
    except PemError as exc:
        raise SeededKeyError(path, f"{exc}; {action}") from exc
    if bundle.key is None:
        raise SeededKeyError(path, f"has no private key; {action}")
    if bundle.leaf is None:
        raise SeededKeyError(path, f"has no certificate; {action}")
    problem = unsupported_key(bundle.key)
    if problem is not None:
        raise SeededKeyError(path, f"{problem}; {action}")

    key_sha256 = public_key_sha256(bundle.key)
    certificate_sha256 = public_key_sha256(bundle.leaf.public_key())
    if key_sha256 != certificate_sha256:
        raise SeededKeyError(
            path,
            f"the private key (public sha256 {key_sha256}) does not match the "
            f"certificate (public sha256 {certificate_sha256}); {action}",
        )
    _restrict_mode(path)
    print(f"ACME reusable key public sha256: {key_sha256}", flush=True)
    log.info("seeded_key_checked", path=str(path), public_key_sha256=key_sha256)
    return key_sha256


def ensure_staged_placeholder(path: Path, domains: tuple[str, ...]) -> str | None:
    """Write a placeholder staging file when none exists (lab mode only).

    HAProxy refuses to start when a crt-store file is missing, so lab runs
    without a seeded key get a short-lived self-signed pair. Returns its
    fingerprint, or None when a file was already there. Its contents are left
    unchecked, but it must be a regular file that HAProxy can read.
    """
    if _exists(path, CertFileError):
        try:
            read_pem_file(path)
        except OSError as exc:
            raise CertFileError(path, f"cannot be read: {exc.strerror}") from exc
        log.warning(
            "seeded_key_check_skipped",
            path=str(path),
            reason="CERTLOCKER_ACME_REQUIRE_SEEDED_KEY=0",
        )
        return None

    bundle = make_self_signed(
        PLACEHOLDER_COMMON_NAME, domains, valid_for=PLACEHOLDER_LIFETIME
    )
    _write_secret(path, bundle.to_pem())
    placeholder = _leaf_fingerprint(bundle)
    log.warning("staged_placeholder_created", path=str(path), sha256=placeholder)
    return placeholder


def _ensure_directory(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertFileError(path, f"cannot be created: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise CertFileError(path, "is not writable by this user")


def _read_pair(path: Path) -> PemBundle:
    """Read a PEM file that must hold a key and its certificate."""
    try:
        bundle = read_bundle(path)
    except OSError as exc:
        raise CertFileError(path, f"cannot be read: {exc.strerror}") from exc
    except PemError as exc:
        raise CertFileError(path, str(exc)) from exc
    if bundle.key is None or bundle.leaf is None:
        raise CertFileError(
            path,
            "must contain a private key and a certificate; move it away to "
            "have it recreated",
        )
    if public_key_sha256(bundle.key) != public_key_sha256(bundle.leaf.public_key()):
        raise CertFileError(path, "its private key does not match its certificate")
    problem = unsupported_key(bundle.key)
    if problem is not None:
        raise CertFileError(path, f"{problem}; move it away to have it recreated")
    return bundle


def _exists(path: Path, error: type[CertFileError]) -> bool:
    """Tell whether ``path`` exists, counting a symbolic link as existing.

    A link whose target is missing raises ``error`` instead of returning
    False, so the caller never writes a new file in its place.
    """
    if not os.path.lexists(path):
        return False
    if not path.is_symlink():
        return True
    try:
        path.stat()
    except FileNotFoundError as exc:
        raise error(
            path,
            "is a symbolic link to a missing file; restore the target or remove "
            "the link",
        ) from exc
    except OSError as exc:
        raise error(
            path, f"is a symbolic link that cannot be followed: {exc.strerror}"
        ) from exc
    return True


def _write_secret(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data, mode=0o600)
    except OSError as exc:
        raise CertFileError(path, f"cannot be written: {exc.strerror}") from exc


def _restrict_mode(path: Path) -> None:
    """Remove group and other access from a key file, logging the change.

    A file this user cannot chmod (it belongs to someone else) is logged and
    kept as it is, because HAProxy can still read it.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & 0o700)
    except OSError as exc:
        log.warning(
            "key_file_mode_not_fixed",
            path=str(path),
            mode=oct(mode),
            error=exc.strerror,
        )
        return
    log.warning("key_file_mode_fixed", path=str(path), old_mode=oct(mode))


def _leaf_fingerprint(bundle: PemBundle) -> str:
    assert bundle.leaf is not None
    return fingerprint(bundle.leaf)
