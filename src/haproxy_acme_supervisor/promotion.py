"""Promotion of a staged bundle into the live file HAProxy serves on TLS.

The staged bundle is fetched from HAProxy with ``dump ssl cert`` and validated
by ``validation.validate_bundle``. It is then swapped into the running HAProxy
with ``set ssl cert`` and ``commit ssl cert``, which needs no reload and drops
no connection. Once ``show ssl cert`` reports its serial, it is written to
``live.pem`` on disk, so a restart serves it too.
"""

import dataclasses
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import structlog
from cryptography import x509

from .config import CertificateSpec, CertPaths
from .errors import BundleRejectedError, RuntimeApiError
from .pem import (
    PemError,
    atomic_write,
    fingerprint,
    is_self_signed,
    parse_bundle,
    read_bundle,
)
from .runtime import RuntimeApi
from .validation import ValidatedBundle, validate_bundle

log = structlog.get_logger("promotion")

Clock = Callable[[], datetime.datetime]


@dataclass(frozen=True)
class LiveRecord:
    """Facts about the promoted certificate that the PEM file cannot carry.

    The directory URL lets a restart notice that ACME_DIRECTORY changed (from
    a staging CA to production, say) although live.pem is still valid.
    """

    acme_directory: str
    serial: str
    sha256: str
    promoted_at: str

    def to_json(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode()

    @classmethod
    def read(cls, path: Path) -> "LiveRecord | None":
        """Read the record, or return None when it is missing or unreadable."""
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{name: str(fields[name]) for name in _RECORD_FIELDS})
        except (OSError, ValueError, KeyError, TypeError):
            return None


_RECORD_FIELDS = ("acme_directory", "serial", "sha256", "promoted_at")


class Outcome(Enum):
    """Result of one check of the staged bundle."""

    PROMOTED = "promoted"
    ALREADY_LIVE = "already_live"
    NOT_STAGED = "not_staged"
    REJECTED = "rejected"


@dataclass
class Promoter:
    """Validates and promotes the staged bundle of one certificate."""

    api: RuntimeApi
    spec: CertificateSpec
    paths: CertPaths
    throwaway_fingerprints: frozenset[str]
    acme_directory: str
    clock: Clock = field(default=lambda: datetime.datetime.now(datetime.UTC))
    loaded_sha256: str | None = None
    live_sha256: str | None = None
    _reported: set[str] = field(default_factory=set)

    async def remember_loaded(self) -> None:
        """Record what HAProxy loaded from disk, so polling skips it.

        At start the staging store contains the seeded file, not something
        HAProxy's ACME client fetched. A poll promotes only a bundle that
        differs from it; an ``acme newcert`` event always leads to a check.
        """
        self.loaded_sha256 = await self._staged_fingerprint()
        try:
            live = read_bundle(self.paths.live)
        except (OSError, PemError):
            live = None
        if live is not None and live.leaf is not None:
            self.live_sha256 = fingerprint(live.leaf)

    async def _staged_fingerprint(self) -> str | None:
        try:
            bundle = parse_bundle(await self.api.dump_ssl_cert(self.spec.staged_ref))
        except (RuntimeApiError, PemError, OSError):
            return None
        return fingerprint(bundle.leaf) if bundle.leaf is not None else None

    async def check(self, *, announced: bool) -> Outcome:
        """Look at the staged bundle and promote it if it is new and valid.

        ``announced`` is true when HAProxy reported a new certificate; a poll
        passes false and then skips the bundle HAProxy loaded at start.
        Raises ``RuntimeApiError`` or ``OSError`` when HAProxy or the disk
        fails; the caller logs it and tries again at the next check.
        """
        staged_pem = await self.api.dump_ssl_cert(self.spec.staged_ref)
        try:
            bundle = parse_bundle(staged_pem)
        except PemError as exc:
            self._report_rejection("unparsable", str(exc), {})
            return Outcome.REJECTED
        if bundle.leaf is None:
            return Outcome.NOT_STAGED

        staged_sha256 = fingerprint(bundle.leaf)
        if staged_sha256 == self.live_sha256:
            return Outcome.ALREADY_LIVE
        if not announced and staged_sha256 == self.loaded_sha256:
            return Outcome.NOT_STAGED

        try:
            validated = validate_bundle(
                bundle,
                self.spec.domains,
                now=self.clock(),
                throwaway_fingerprints=self.throwaway_fingerprints,
                live_not_after=self._live_expiry_to_beat(bundle.leaf),
            )
        except BundleRejectedError as exc:
            self._report_rejection(staged_sha256, exc.reason, exc.details)
            return Outcome.REJECTED

        await self.promote(validated)
        return Outcome.PROMOTED

    def _live_expiry_to_beat(
        self, staged: x509.Certificate
    ) -> datetime.datetime | None:
        """Return the live expiry a renewal from the same CA must not undercut.

        A certificate from the same issuer as the live one is a renewal and
        must last longer. One from another issuer (a changed ACME_DIRECTORY,
        or a rotated intermediate) may legitimately expire sooner, and so may
        anything replacing a throwaway or self-signed live certificate.
        """
        try:
            live = read_bundle(self.paths.live).leaf
        except (OSError, PemError):
            return None
        if live is None or fingerprint(live) in self.throwaway_fingerprints:
            return None
        if is_self_signed(live) or live.issuer != staged.issuer:
            return None
        return live.not_valid_after_utc

    async def promote(self, validated: ValidatedBundle) -> None:
        """Swap the validated bundle into HAProxy, confirm it, then persist it."""
        live_name = str(self.paths.live)
        payload = validated.bundle.to_pem()
        await self.api.replace_ssl_cert(live_name, payload)

        served_serial = await self.api.show_ssl_cert_serial(live_name)
        if served_serial != validated.serial.lstrip("0"):
            raise RuntimeApiError(
                f"show ssl cert {live_name}",
                f"serial {served_serial} served after commit, "
                f"expected {validated.serial}",
            )

        atomic_write(self.paths.live, payload, mode=0o600)
        self.live_sha256 = validated.sha256
        record = LiveRecord(
            acme_directory=self.acme_directory,
            serial=validated.serial,
            sha256=validated.sha256,
            promoted_at=self.clock().isoformat(),
        )
        atomic_write(self.paths.live_record, record.to_json(), mode=0o600)
        log.info(
            "cert_promoted",
            cert=self.spec.name,
            path=live_name,
            serial=validated.serial,
            sha256=validated.sha256,
            not_after=validated.not_after.isoformat(),
            public_key_sha256=validated.public_key_sha256,
        )

    def _report_rejection(
        self, staged_sha256: str, reason: str, details: dict[str, str]
    ) -> None:
        """Log a rejected bundle as an error once, then at debug level."""
        if staged_sha256 in self._reported:
            log.debug(
                "staged_bundle_still_rejected", cert=self.spec.name, reason=reason
            )
            return
        self._reported.add(staged_sha256)
        hint = None
        if "key_public_sha256" in details:
            hint = (
                f"the CA returned a certificate for another key; seed the key the "
                f"CA's vault stores into {self.paths.staged} (with its certificate) "
                "and restart"
            )
        log.error(
            "staged_bundle_rejected",
            cert=self.spec.name,
            staged=self.spec.staged_ref,
            reason=reason,
            action=hint,
            **details,
        )
