"""Tests for ``validate_bundle``: one passing bundle and each way to fail."""

import datetime

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

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
    Issued,
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
    live_not_after: datetime.datetime | None = None,
) -> BundleRejectedError:
    """Return the BundleRejectedError that validating ``bundle`` raises."""
    with pytest.raises(BundleRejectedError) as caught:
        validate_bundle(
            bundle,
            domains,
            now=now,
            throwaway_fingerprints=throwaway,
            live_not_after=live_not_after,
        )
    return caught.value


def with_intermediate(leaf: Issued, chain: Chain) -> PemBundle:
    """Return ``leaf`` with its key, followed by the chain's intermediate."""
    return PemBundle(leaf.key, (leaf.certificate, chain.intermediate.certificate))


def ca_leaf(chain: Chain) -> PemBundle:
    """A leaf that carries basicConstraints ca=true."""
    return with_intermediate(make_leaf(chain.intermediate, DOMAINS, ca=True), chain)


def client_leaf(chain: Chain) -> PemBundle:
    """A leaf whose extended key usage is clientAuth only."""
    usages = (ExtendedKeyUsageOID.CLIENT_AUTH,)
    leaf = make_leaf(chain.intermediate, DOMAINS, usages=usages)
    return with_intermediate(leaf, chain)


def self_signed_with_chain(chain: Chain) -> PemBundle:
    """A self-signed leaf followed by an unrelated intermediate."""
    own = make_self_signed("own", DOMAINS, valid_for=DAY, valid_from=NOW - DAY / 2)
    return PemBundle(own.key, (*own.certificates, chain.intermediate.certificate))


def doubled_intermediate(chain: Chain) -> PemBundle:
    """Leaf, intermediate, then the intermediate again."""
    intermediate = chain.intermediate.certificate
    return PemBundle(
        chain.leaf.key, (chain.leaf.certificate, intermediate, intermediate)
    )


def non_ca_issuer(chain: Chain) -> PemBundle:
    """A leaf signed by another leaf, which is sent as the chain."""
    issuer = make_leaf(chain.intermediate, ["issuer.example.com"])
    leaf = make_leaf(issuer, DOMAINS)
    return PemBundle(
        leaf.key,
        (leaf.certificate, issuer.certificate, chain.intermediate.certificate),
    )


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


class TestLeafAndChainShape:
    def test_leaf_without_extended_usage_passes(self, chain: Chain) -> None:
        """A leaf without an extended key usage extension is usable by servers."""
        leaf = make_leaf(chain.intermediate, DOMAINS, usages=None)
        bundle = with_intermediate(leaf, chain)
        assert validate_bundle(bundle, DOMAINS, now=NOW).bundle == bundle

    def test_leaf_with_several_usages_passes(self, chain: Chain) -> None:
        """A leaf for serverAuth and clientAuth passes."""
        usages = (
            ExtendedKeyUsageOID.CLIENT_AUTH,
            ExtendedKeyUsageOID.SERVER_AUTH,
        )
        leaf = make_leaf(chain.intermediate, DOMAINS, usages=usages)
        bundle = with_intermediate(leaf, chain)
        assert validate_bundle(bundle, DOMAINS, now=NOW).bundle == bundle

    def test_ca_leaf_rejected(self, chain: Chain) -> None:
        """A leaf that is a CA certificate is rejected."""
        error = rejection(ca_leaf(chain))
        assert error.reason.startswith("the staged certificate is a CA certificate")

    def test_client_only_leaf_rejected(self, chain: Chain) -> None:
        """A leaf whose extended key usage lacks serverAuth is rejected."""
        error = rejection(client_leaf(chain))
        assert "does not include serverAuth" in error.reason
        assert error.details["usages"] == ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string

    def test_self_signed_leaf_with_chain_rejected(self, chain: Chain) -> None:
        """A self-signed leaf is rejected whatever follows it."""
        error = rejection(self_signed_with_chain(chain))
        assert error.reason.startswith("the staged certificate is self-issued")

    def test_self_signed_leaf_twice_rejected(self) -> None:
        """A self-signed leaf followed by itself is rejected as self-issued."""
        own = make_self_signed("own", DOMAINS, valid_for=DAY, valid_from=NOW - DAY / 2)
        bundle = PemBundle(own.key, own.certificates * 2)
        assert rejection(bundle).reason.startswith(
            "the staged certificate is self-issued"
        )

    def test_leaf_twice_rejected(self, chain: Chain) -> None:
        """A CA-issued leaf followed by itself is rejected as a duplicate."""
        leaf = chain.leaf.certificate
        error = rejection(PemBundle(chain.leaf.key, (leaf, leaf)))
        assert error.reason == "the staged bundle contains the same certificate twice"
        assert error.details["position"] == "1"

    def test_duplicate_intermediate_rejected(self, chain: Chain) -> None:
        """An intermediate sent twice is rejected with both positions."""
        error = rejection(doubled_intermediate(chain))
        assert error.details["first_position"] == "1"
        assert error.details["position"] == "2"
        assert error.details["duplicate_sha256"] == fingerprint(
            chain.intermediate.certificate
        )

    def test_non_ca_chain_certificate_rejected(self, chain: Chain) -> None:
        """A chain certificate without basicConstraints ca=true is rejected."""
        error = rejection(non_ca_issuer(chain))
        assert error.reason.startswith("the staged chain contains a certificate")
        assert error.details["position"] == "1"
        assert error.details["subject"] == "CN=issuer.example.com"

    def test_root_as_whole_chain_passes(self) -> None:
        """A leaf issued straight from a root passes with the root as its chain."""
        root = make_ca("Direct Root CA")
        leaf = make_leaf(root, DOMAINS)
        bundle = PemBundle(leaf.key, (leaf.certificate, root.certificate))
        assert validate_bundle(bundle, DOMAINS, now=NOW).bundle == bundle


class TestLiveExpiry:
    def test_shorter_than_live_rejected(self, chain: Chain) -> None:
        """A leaf that expires before the live certificate is rejected."""
        live_not_after = chain.leaf.certificate.not_valid_after_utc + DAY
        error = rejection(good_bundle(chain), live_not_after=live_not_after)
        assert "would replace a certificate that lasts longer" in error.reason
        assert error.details["live_not_after"] == live_not_after.isoformat()

    def test_same_expiry_passes(self, chain: Chain) -> None:
        """A leaf that expires at the same instant as the live one passes."""
        bundle = good_bundle(chain)
        live_not_after = chain.leaf.certificate.not_valid_after_utc
        validated = validate_bundle(
            bundle, DOMAINS, now=NOW, live_not_after=live_not_after
        )
        assert validated.bundle == bundle

    def test_longer_than_live_passes(self, chain: Chain) -> None:
        """A leaf that outlasts the live certificate passes."""
        bundle = good_bundle(chain)
        validated = validate_bundle(bundle, DOMAINS, now=NOW, live_not_after=NOW)
        assert validated.bundle == bundle

    def test_no_live_expiry_passes(self, chain: Chain) -> None:
        """Without a live expiry (bootstrap or unreadable live.pem) it passes."""
        bundle = good_bundle(chain)
        validated = validate_bundle(bundle, DOMAINS, now=NOW, live_not_after=None)
        assert validated.bundle == bundle


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
            rejection(ca_leaf(chain)),
            rejection(client_leaf(chain)),
            rejection(self_signed_with_chain(chain)),
            rejection(doubled_intermediate(chain)),
            rejection(non_ca_issuer(chain)),
            rejection(good_bundle(chain), live_not_after=NOW + 365 * DAY),
        ]
        reasons = [error.reason for error in cases]
        assert len(set(reasons)) == len(reasons)

    def test_details_hold_no_pem(self, chain: Chain) -> None:
        """No rejection detail carries PEM text."""
        other_key = new_key()
        error = rejection(PemBundle(other_key, good_bundle(chain).certificates))
        for value in error.details.values():
            assert "-----BEGIN" not in value
