"""Independent validation of a staged bundle before it may become live.

HAProxy 3.2 to 3.4 store whatever certificate the CA returns next to the CSR's
key without comparing them, and log the order as a success. These checks are
the only barrier between that staging store and the certificate that clients
receive.
"""

import datetime
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import BundleRejectedError
from .pem import (
    PemBundle,
    covers,
    dns_names,
    fingerprint,
    public_key_sha256,
    serial_hex,
)


@dataclass(frozen=True)
class ValidatedBundle:
    """A bundle that passed every check, with the facts logged on promotion."""

    bundle: PemBundle
    serial: str
    sha256: str
    not_after: datetime.datetime
    public_key_sha256: str


def validate_bundle(
    bundle: PemBundle,
    domains: Sequence[str],
    *,
    now: datetime.datetime,
    throwaway_fingerprints: Collection[str] = (),
    live_not_after: datetime.datetime | None = None,
) -> ValidatedBundle:
    """Check that ``bundle`` is safe to serve for ``domains`` at ``now``.

    The checks run in this order. A key and a leaf must be present, and the
    key must belong to the leaf. The leaf must not be a throwaway (bootstrap
    or placeholder) certificate, and ``now`` must be inside its validity
    window. When ``live_not_after`` is given (the expiry of the certificate
    now served), the leaf must not expire before it. The leaf's DNS names
    must cover every domain. The leaf must not be a CA, and an extended key
    usage, when present, must include serverAuth.

    The bundle must hold at least one chain certificate after the leaf: a CA
    that issues straight from its root must return that root as the chain,
    as HAProxy then serves what clients need to build the path. The leaf must
    not be self-issued, no certificate may appear twice, every chain
    certificate must be a CA, and each must have signed the one before it.

    Raises ``BundleRejectedError`` with the reason and hashes safe to log.
    """
    key, leaf = bundle.key, bundle.leaf
    if key is None:
        raise BundleRejectedError("the staged bundle has no private key")
    if leaf is None:
        raise BundleRejectedError("the staged bundle has no certificate")

    leaf_sha256 = fingerprint(leaf)
    key_sha256 = public_key_sha256(key)
    certificate_key_sha256 = public_key_sha256(leaf.public_key())
    if key_sha256 != certificate_key_sha256:
        raise BundleRejectedError(
            "the staged private key does not match the staged certificate",
            key_public_sha256=key_sha256,
            certificate_public_sha256=certificate_key_sha256,
            sha256=leaf_sha256,
        )
    if leaf_sha256 in throwaway_fingerprints:
        raise BundleRejectedError(
            "the staged certificate is the bootstrap or placeholder certificate",
            sha256=leaf_sha256,
        )

    _check_validity(leaf, now, leaf_sha256)
    if live_not_after is not None and leaf.not_valid_after_utc < live_not_after:
        raise BundleRejectedError(
            "the staged certificate expires before the live one and would "
            "replace a certificate that lasts longer",
            not_after=leaf.not_valid_after_utc.isoformat(),
            live_not_after=live_not_after.isoformat(),
            sha256=leaf_sha256,
        )
    _check_names(leaf, domains, leaf_sha256)
    _check_server_leaf(leaf, leaf_sha256)
    _check_chain(bundle.certificates, leaf_sha256)

    return ValidatedBundle(
        bundle=bundle,
        serial=serial_hex(leaf),
        sha256=leaf_sha256,
        not_after=leaf.not_valid_after_utc,
        public_key_sha256=key_sha256,
    )


def _check_validity(
    leaf: x509.Certificate, now: datetime.datetime, leaf_sha256: str
) -> None:
    if now < leaf.not_valid_before_utc:
        raise BundleRejectedError(
            "the staged certificate is not valid yet",
            not_before=leaf.not_valid_before_utc.isoformat(),
            sha256=leaf_sha256,
        )
    if now >= leaf.not_valid_after_utc:
        raise BundleRejectedError(
            "the staged certificate has expired",
            not_after=leaf.not_valid_after_utc.isoformat(),
            sha256=leaf_sha256,
        )


def _check_names(
    leaf: x509.Certificate, domains: Sequence[str], leaf_sha256: str
) -> None:
    names = dns_names(leaf)
    missing = [domain for domain in domains if not covers(names, domain)]
    if missing:
        raise BundleRejectedError(
            "the staged certificate does not cover every configured domain",
            missing=",".join(missing),
            names=",".join(names),
            sha256=leaf_sha256,
        )


def _check_server_leaf(leaf: x509.Certificate, leaf_sha256: str) -> None:
    """Check that the leaf is an end-entity certificate for TLS servers."""
    if _is_ca(leaf):
        raise BundleRejectedError(
            "the staged certificate is a CA certificate (basicConstraints "
            "ca=true), not a server certificate",
            sha256=leaf_sha256,
        )
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH not in usage.value:
        raise BundleRejectedError(
            "the staged certificate's extended key usage does not include serverAuth",
            usages=",".join(oid.dotted_string for oid in usage.value),
            sha256=leaf_sha256,
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        )
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _check_chain(certificates: Sequence[x509.Certificate], leaf_sha256: str) -> None:
    """Check the chain's presence, its certificates and every signature."""
    if len(certificates) < 2:
        raise BundleRejectedError(
            "the staged bundle has no chain after the leaf certificate",
            sha256=leaf_sha256,
        )
    leaf = certificates[0]
    if leaf.issuer == leaf.subject:
        raise BundleRejectedError(
            "the staged certificate is self-issued (its issuer is its own "
            "subject), so no CA vouches for it",
            sha256=leaf_sha256,
        )
    seen: dict[str, int] = {}
    for position, certificate in enumerate(certificates):
        sha256 = fingerprint(certificate)
        if sha256 in seen:
            raise BundleRejectedError(
                "the staged bundle contains the same certificate twice",
                position=str(position),
                first_position=str(seen[sha256]),
                duplicate_sha256=sha256,
                sha256=leaf_sha256,
            )
        seen[sha256] = position
    for position, certificate in enumerate(certificates[1:], start=1):
        if not _is_ca(certificate):
            raise BundleRejectedError(
                "the staged chain contains a certificate that is not a CA "
                "(no basicConstraints ca=true)",
                position=str(position),
                subject=certificate.subject.rfc4514_string(),
                sha256=leaf_sha256,
            )
    for position, (child, issuer) in enumerate(
        itertools.pairwise(certificates), start=1
    ):
        if child.issuer != issuer.subject:
            raise BundleRejectedError(
                "the staged chain is out of order: a certificate's issuer is not "
                "the subject of the certificate after it",
                position=str(position),
                issuer=child.issuer.rfc4514_string(),
                next_subject=issuer.subject.rfc4514_string(),
                sha256=leaf_sha256,
            )
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise BundleRejectedError(
                "the staged chain is broken: a certificate's signature does not "
                "verify with the key of the certificate after it",
                position=str(position),
                detail=str(exc) or type(exc).__name__,
                sha256=leaf_sha256,
            ) from exc
