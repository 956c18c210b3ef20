"""When to order: at start, and whenever the live certificate falls due.

HAProxy's own ACME scheduler looks at the staging store. After a restart that
store contains the seeded file again, not the certificate being served. The
scheduler would then order too often with a short-lived seed, and too late with
a long-lived one. The supervisor therefore turns HAProxy's scheduler off
(``acme.scheduler off`` in the template) and decides from ``live.pem``
instead, which also keeps restarts from spending the CA's rate limits.
"""

import datetime
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cryptography import x509

from .pem import (
    PemBundle,
    covers,
    dns_names,
    fingerprint,
    is_self_signed,
    public_key_sha256,
)

# A certificate is due for renewal in the last third of its lifetime, or 30
# days before it expires, whichever comes first. The 30-day rule applies only
# to lifetimes of 60 days or more: for a short-lived certificate (Let's Encrypt
# offers 6-day ones) it would fall before issuance and order without end.
RENEWAL_MARGIN = datetime.timedelta(days=30)
# How long to wait before asking HAProxy again after an order that did not
# lead to a promotion. HAProxy retries a failing order on its own meanwhile.
RENEW_RETRY_INTERVAL = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class RenewalPlan:
    """Whether to order now, why, and when the live certificate falls due."""

    order_now: bool
    reason: str
    due_at: datetime.datetime | None


def due_time(leaf: x509.Certificate) -> datetime.datetime:
    """Return when ``leaf`` enters its renewal window."""
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    lifetime = not_after - not_before
    last_third = not_after - lifetime / 3
    if lifetime < 2 * RENEWAL_MARGIN:
        return last_third
    return min(last_third, not_after - RENEWAL_MARGIN)


def plan_renewal(
    live: PemBundle | None,
    domains: Sequence[str],
    *,
    throwaway_fingerprints: Collection[str],
    now: datetime.datetime,
    directory_change: tuple[str, str] | None = None,
    expected_key_sha256: str | None = None,
) -> RenewalPlan:
    """Decide from the live bundle whether a new certificate is needed now.

    ``directory_change`` is (recorded, configured) when live.pem came from
    another ACME directory than the one configured now. ``expected_key_sha256``
    is the seeded key's hash when every order reuses it, so a reseeded key
    leads to an order.
    """
    leaf = live.leaf if live is not None else None
    if leaf is None:
        return RenewalPlan(True, "live.pem has no certificate", None)
    if fingerprint(leaf) in throwaway_fingerprints:
        return RenewalPlan(True, "live.pem contains the bootstrap certificate", None)
    # A bootstrap certificate whose bootstrap.pem was deleted and recreated no
    # longer matches a throwaway fingerprint; no CA-issued leaf is self-signed.
    if is_self_signed(leaf):
        return RenewalPlan(True, "live.pem is self-signed", None)
    if directory_change is not None:
        recorded, configured = directory_change
        return RenewalPlan(
            True,
            f"live.pem came from {recorded} but ACME_DIRECTORY is {configured}",
            due_time(leaf),
        )
    if expected_key_sha256 is not None:
        live_key_sha256 = public_key_sha256(leaf.public_key())
        if live_key_sha256 != expected_key_sha256:
            return RenewalPlan(
                True,
                "live.pem's key is not the seeded key (public sha256 "
                f"{live_key_sha256}, seeded {expected_key_sha256})",
                due_time(leaf),
            )

    names = dns_names(leaf)
    missing = [domain for domain in domains if not covers(names, domain)]
    if missing:
        return RenewalPlan(
            True, f"live.pem does not cover {', '.join(missing)}", due_time(leaf)
        )

    due_at = due_time(leaf)
    expiry = leaf.not_valid_after_utc.isoformat()
    if now >= due_at:
        return RenewalPlan(
            True, f"live.pem expires {expiry} and is due for renewal", due_at
        )
    return RenewalPlan(
        False,
        f"live.pem is valid until {expiry}; renewal due {due_at.isoformat()}",
        due_at,
    )
