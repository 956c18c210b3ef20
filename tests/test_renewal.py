"""Tests for renewal.py: when live.pem calls for an order."""

from haproxy_acme_supervisor.pem import (
    PemBundle,
    fingerprint,
    make_self_signed,
    public_key_sha256,
)
from haproxy_acme_supervisor.renewal import RENEWAL_MARGIN, due_time, plan_renewal

from .certificates import DAY, NOW, make_ca, make_leaf

DOMAINS = ("shop.example.com",)


def live_bundle(**leaf_options: object) -> PemBundle:
    root = make_ca("Test Root")
    leaf = make_leaf(root, DOMAINS, **leaf_options)  # type: ignore[arg-type]
    return PemBundle(leaf.key, (leaf.certificate, root.certificate))


class TestDueTime:
    def test_ninety_day_certificate_due_thirty_days_early(self) -> None:
        """For 90 days, 30 days before expiry comes first (the last third is 30)."""
        leaf = live_bundle(not_before=NOW, not_after=NOW + 90 * DAY).leaf
        assert leaf is not None
        assert due_time(leaf) == NOW + 60 * DAY

    def test_short_certificate_due_at_last_third(self) -> None:
        """A 6-day certificate is due on day 4, not 30 days before expiry."""
        leaf = live_bundle(not_before=NOW, not_after=NOW + 6 * DAY).leaf
        assert leaf is not None
        assert due_time(leaf) == NOW + 4 * DAY

    def test_sixty_day_certificate_due_at_half(self) -> None:
        """At 60 days the 30-day rule applies and comes before the last third."""
        leaf = live_bundle(not_before=NOW, not_after=NOW + 60 * DAY).leaf
        assert leaf is not None
        assert due_time(leaf) == NOW + 60 * DAY - RENEWAL_MARGIN

    def test_long_certificate_due_at_last_third(self) -> None:
        """For a year-long certificate the last third comes before the 30 days."""
        leaf = live_bundle(not_before=NOW, not_after=NOW + 360 * DAY).leaf
        assert leaf is not None
        assert due_time(leaf) == NOW + 240 * DAY


class TestPlanRenewal:
    def test_missing_live_orders(self) -> None:
        """No live bundle at all leads to an order."""
        plan = plan_renewal(None, DOMAINS, throwaway_fingerprints=(), now=NOW)
        assert plan.order_now

    def test_bootstrap_live_orders(self) -> None:
        """A live.pem that is the bootstrap certificate leads to an order."""
        live = live_bundle()
        assert live.leaf is not None
        plan = plan_renewal(
            live,
            DOMAINS,
            throwaway_fingerprints={fingerprint(live.leaf)},
            now=NOW,
        )
        assert plan.order_now
        assert "bootstrap" in plan.reason

    def test_self_signed_live_orders(self) -> None:
        """A self-signed live.pem orders even when it is not a known throwaway."""
        live = make_self_signed(
            "old bootstrap", DOMAINS, valid_for=365 * DAY, valid_from=NOW - DAY
        )
        plan = plan_renewal(live, DOMAINS, throwaway_fingerprints=(), now=NOW)
        assert plan.order_now
        assert plan.reason == "live.pem is self-signed"

    def test_missing_domain_orders(self) -> None:
        """A live.pem that lacks a configured domain leads to an order."""
        plan = plan_renewal(
            live_bundle(),
            (*DOMAINS, "www.example.com"),
            throwaway_fingerprints=(),
            now=NOW,
        )
        assert plan.order_now
        assert "www.example.com" in plan.reason

    def test_fresh_certificate_skips(self) -> None:
        """A certificate far from its due time needs no order, and reports when."""
        live = live_bundle(not_before=NOW - DAY, not_after=NOW + 89 * DAY)
        plan = plan_renewal(live, DOMAINS, throwaway_fingerprints=(), now=NOW)
        assert not plan.order_now
        assert plan.due_at == NOW + 59 * DAY

    def test_due_certificate_orders(self) -> None:
        """A certificate inside its renewal window leads to an order."""
        live = live_bundle(not_before=NOW - 70 * DAY, not_after=NOW + 20 * DAY)
        plan = plan_renewal(live, DOMAINS, throwaway_fingerprints=(), now=NOW)
        assert plan.order_now
        assert "due" in plan.reason

    def test_expired_certificate_orders(self) -> None:
        """An expired live certificate leads to an order."""
        live = live_bundle(not_before=NOW - 100 * DAY, not_after=NOW - DAY)
        plan = plan_renewal(live, DOMAINS, throwaway_fingerprints=(), now=NOW)
        assert plan.order_now


class TestPlanRenewalChanges:
    def test_changed_directory_orders(self) -> None:
        """A valid live.pem from another ACME directory leads to an order."""
        change = ("https://staging.example/dir", "https://production.example/dir")
        plan = plan_renewal(
            live_bundle(),
            DOMAINS,
            throwaway_fingerprints=(),
            now=NOW,
            directory_change=change,
        )
        assert plan.order_now
        assert "https://production.example/dir" in plan.reason

    def test_reseeded_key_orders(self) -> None:
        """With key reuse, a live key other than the seeded one leads to an order."""
        plan = plan_renewal(
            live_bundle(),
            DOMAINS,
            throwaway_fingerprints=(),
            now=NOW,
            expected_key_sha256="00" * 32,
        )
        assert plan.order_now
        assert "seeded" in plan.reason

    def test_seeded_key_in_live_skips(self) -> None:
        """A fresh live.pem carrying the seeded key needs no order."""
        live = live_bundle()
        assert live.key is not None
        plan = plan_renewal(
            live,
            DOMAINS,
            throwaway_fingerprints=(),
            now=NOW,
            expected_key_sha256=public_key_sha256(live.key),
        )
        assert not plan.order_now
