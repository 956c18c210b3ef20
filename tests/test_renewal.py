"""Tests for renewal.py: when live.pem calls for an order."""

from haproxy_acme_supervisor.pem import PemBundle, fingerprint
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
        """A certificate far from its due time needs no order, and says when."""
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
