"""Tests for ``validate_bundle``: one passing bundle and each way to fail."""

import datetime

import pytest

from haproxy_acme_supervisor.errors import BundleRejectedError
from haproxy_acme_supervisor.pem import (
    PemBundle,
    fingerprint,
    make_self_signed,
    public_key_sha256,
    serial_hex,
)
from haproxy_acme_supervisor.validation import validate_bundle

from .certificates import (
    DAY,
    NOW,
    Chain,
    make_ca,
    make_chain,
    make_leaf,
    new_key,
)

DOMAINS = ("example.com", "www.example.com")


@pytest.fixture(scope="module")
def chain() -> Chain:
    """A root, intermediate and leaf for DOMAINS, valid at NOW."""
    return make_chain(DOMAINS)


def good_bundle(chain: Chain) -> PemBundle:
    """Return key, leaf and intermediate, the bundle an ACME CA yields."""
    return PemBundle(
        chain.leaf.key, (chain.leaf.certificate, chain.intermediate.certificate)
    )


def rejection(
    bundle: PemBundle,
    domains: tuple[str, ...] = DOMAINS,
    *,
    now: datetime.datetime = NOW,
    throwaway: frozenset[str] = frozenset(),
) -> BundleRejectedError:
    """Return the BundleRejectedError that validating ``bundle`` raises."""
    with pytest.raises(BundleRejectedError) as caught:
        validate_bundle(bundle, domains, now=now, throwaway_fingerprints=throwaway)
    return caught.value


class TestAccepted:
    def test_good_bundle_passes(self, chain: Chain) -> None:
        """A matching, current, covering bundle with its chain passes."""
        validated = validate_bundle(good_bundle(chain), DOMAINS, now=NOW)
        leaf = chain.leaf.certificate
        assert validated.sha256 == fingerprint(leaf)
        assert validated.serial == serial_hex(leaf)
        assert validated.not_after == leaf.not_valid_after_utc
        assert validated.public_key_sha256 == public_key_sha256(chain.leaf.key)
        assert validated.bundle == good_bundle(chain)

    def test_full_chain_passes(self, chain: Chain) -> None:
        """A chain that also carries the root passes."""
        bundle = PemBundle(
            chain.leaf.key,
            (
                chain.leaf.certificate,
                chain.intermediate.certificate,
                chain.root.certificate,
            ),
        )
        assert validate_bundle(bundle, DOMAINS, now=NOW).bundle == bundle

    def test_subset_of_names_passes(self, chain: Chain) -> None:
        """Configured domains may be fewer than the certificate's names."""
        validated = validate_bundle(good_bundle(chain), ["www.example.com"], now=NOW)
        assert validated.sha256 == fingerprint(chain.leaf.certificate)

    def test_wildcard_leaf_covers(self, chain: Chain) -> None:
        """A '*.example.com' leaf covers a configured subdomain and the wildcard."""
        leaf = make_leaf(chain.intermediate, ["example.com", "*.example.com"])
        bundle = PemBundle(leaf.key, (leaf.certificate, chain.intermediate.certificate))
        domains = ["example.com", "a.example.com", "*.example.com"]
        assert validate_bundle(bundle, domains, now=NOW).bundle == bundle

    def test_window_edges(self, chain: Chain) -> None:
        """The first valid instant passes and the last second before expiry does."""
        leaf = chain.leaf.certificate
        bundle = good_bundle(chain)
        start = leaf.not_valid_before_utc
        end = leaf.not_valid_after_utc - datetime.timedelta(seconds=1)
        assert validate_bundle(bundle, DOMAINS, now=start).bundle == bundle
        assert validate_bundle(bundle, DOMAINS, now=end).bundle == bundle


class TestRejected:
    def test_no_key(self, chain: Chain) -> None:
        """A bundle without a private key is rejected."""
        bundle = PemBundle(None, good_bundle(chain).certificates)
        assert rejection(bundle).reason == "the staged bundle has no private key"

    def test_no_leaf(self, chain: Chain) -> None:
        """A bundle without certificates is rejected."""
        bundle = PemBundle(chain.leaf.key, ())
        assert rejection(bundle).reason == "the staged bundle has no certificate"

    def test_key_mismatch(self, chain: Chain) -> None:
        """A key that is not the leaf's is rejected with both hashes."""
        other_key = new_key()
        bundle = PemBundle(other_key, good_bundle(chain).certificates)
        error = rejection(bundle)
        assert "does not match" in error.reason
        assert error.details["key_public_sha256"] == public_key_sha256(other_key)
        assert error.details["certificate_public_sha256"] == public_key_sha256(
            chain.leaf.key
        )
        assert error.details["sha256"] == fingerprint(chain.leaf.certificate)

    def test_throwaway_fingerprint(self, chain: Chain) -> None:
        """The bootstrap or placeholder certificate is never promoted."""
        leaf_sha256 = fingerprint(chain.leaf.certificate)
        error = rejection(good_bundle(chain), throwaway=frozenset({leaf_sha256}))
        assert "bootstrap or placeholder" in error.reason
        assert error.details["sha256"] == leaf_sha256

    def test_self_signed_placeholder(self) -> None:
        """A placeholder that is not listed as throwaway still lacks a chain."""
        placeholder = make_self_signed(
            "placeholder", DOMAINS, valid_for=DAY, valid_from=NOW - DAY / 2
        )
        assert "no chain" in rejection(placeholder).reason

    def test_expired(self, chain: Chain) -> None:
        """A leaf past notAfter is rejected with the date."""
        leaf = make_leaf(
            chain.intermediate,
            DOMAINS,
            not_before=NOW - 100 * DAY,
            not_after=NOW - DAY,
        )
        bundle = PemBundle(leaf.key, (leaf.certificate, chain.intermediate.certificate))
        error = rejection(bundle)
        assert error.reason == "the staged certificate has expired"
        assert error.details["not_after"] == (NOW - DAY).isoformat()

    def test_expiry_instant_rejected(self, chain: Chain) -> None:
        """At exactly notAfter the leaf counts as expired."""
        expiry = chain.leaf.certificate.not_valid_after_utc
        error = rejection(good_bundle(chain), now=expiry)
        assert error.reason == "the staged certificate has expired"

    def test_not_yet_valid(self, chain: Chain) -> None:
        """A leaf before notBefore is rejected with the date."""
        leaf = make_leaf(
            chain.intermediate,
            DOMAINS,
            not_before=NOW + DAY,
            not_after=NOW + 90 * DAY,
        )
        bundle = PemBundle(leaf.key, (leaf.certificate, chain.intermediate.certificate))
        error = rejection(bundle)
        assert error.reason == "the staged certificate is not valid yet"
        assert error.details["not_before"] == (NOW + DAY).isoformat()

    def test_missing_domain(self, chain: Chain) -> None:
        """A configured domain outside the leaf's names is rejected."""
        error = rejection(good_bundle(chain), ("example.com", "api.example.com"))
        assert "does not cover" in error.reason
        assert error.details["missing"] == "api.example.com"
        assert error.details["names"] == "example.com,www.example.com"

    def test_wildcard_not_bare_domain(self, chain: Chain) -> None:
        """A '*.example.com' leaf does not cover 'example.com'."""
        leaf = make_leaf(chain.intermediate, ["*.example.com"])
        bundle = PemBundle(leaf.key, (leaf.certificate, chain.intermediate.certificate))
        error = rejection(bundle, ("example.com",))
        assert error.details["missing"] == "example.com"

    def test_configured_wildcard_needs_wildcard(self, chain: Chain) -> None:
        """A configured '*.example.com' is not covered by concrete names."""
        error = rejection(good_bundle(chain), ("*.example.com",))
        assert error.details["missing"] == "*.example.com"

    def test_no_chain(self, chain: Chain) -> None:
        """A leaf without its intermediate is rejected."""
        bundle = PemBundle(chain.leaf.key, (chain.leaf.certificate,))
        error = rejection(bundle)
        assert (
            error.reason == "the staged bundle has no chain after the leaf certificate"
        )

    def test_wrong_chain_order(self, chain: Chain) -> None:
        """Root before intermediate is reported as out of order."""
        bundle = PemBundle(
            chain.leaf.key,
            (
                chain.leaf.certificate,
                chain.root.certificate,
                chain.intermediate.certificate,
            ),
        )
        error = rejection(bundle)
        assert error.reason.startswith("the staged chain is out of order")
        assert error.details["position"] == "1"
        assert error.details["next_subject"] == "CN=Test Root CA"

    def test_chain_not_signed_by_next(self, chain: Chain) -> None:
        """An intermediate with the right name but another key is rejected."""
        impostor = make_ca("Test Intermediate CA", issuer=chain.root)
        bundle = PemBundle(
            chain.leaf.key, (chain.leaf.certificate, impostor.certificate)
        )
        error = rejection(bundle)
        assert error.reason.startswith("the staged chain is broken")
        assert error.details["position"] == "1"

    def test_broken_upper_link(self, chain: Chain) -> None:
        """A bad second link is reported at position 2."""
        other_root = make_ca("Test Root CA")
        bundle = PemBundle(
            chain.leaf.key,
            (
                chain.leaf.certificate,
                chain.intermediate.certificate,
                other_root.certificate,
            ),
        )
        error = rejection(bundle)
        assert error.reason.startswith("the staged chain is broken")
        assert error.details["position"] == "2"

    def test_reasons_are_distinct(self, chain: Chain) -> None:
        """Every rejection above has its own reason text."""
        leaf = chain.leaf.certificate
        intermediate = chain.intermediate.certificate
        expired = make_leaf(chain.intermediate, DOMAINS, not_after=NOW - DAY)
        future = make_leaf(chain.intermediate, DOMAINS, not_before=NOW + DAY)
        impostor = make_ca("Test Intermediate CA", issuer=chain.root)
        cases = [
            rejection(PemBundle(None, (leaf, intermediate))),
            rejection(PemBundle(chain.leaf.key, ())),
            rejection(PemBundle(new_key(), (leaf, intermediate))),
            rejection(good_bundle(chain), throwaway=frozenset({fingerprint(leaf)})),
            rejection(PemBundle(expired.key, (expired.certificate, intermediate))),
            rejection(PemBundle(future.key, (future.certificate, intermediate))),
            rejection(good_bundle(chain), ("api.example.com",)),
            rejection(PemBundle(chain.leaf.key, (leaf,))),
            rejection(
                PemBundle(chain.leaf.key, (leaf, chain.root.certificate, intermediate))
            ),
            rejection(PemBundle(chain.leaf.key, (leaf, impostor.certificate))),
        ]
        reasons = [error.reason for error in cases]
        assert len(set(reasons)) == len(reasons)

    def test_details_hold_no_pem(self, chain: Chain) -> None:
        """No rejection detail carries PEM text."""
        other_key = new_key()
        error = rejection(PemBundle(other_key, good_bundle(chain).certificates))
        for value in error.details.values():
            assert "-----BEGIN" not in value
