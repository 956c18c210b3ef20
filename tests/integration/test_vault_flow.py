"""The whole boot sequence on real HAProxy against the vault-style lab gateway."""

import json
import re
import signal
import stat

import pytest
from cryptography import x509

from haproxy_acme_supervisor.pem import fingerprint, public_key_sha256, read_bundle

from ..harness import certificate_sha256, served_certificate
from .conftest import LAB_DOMAIN, Lab

pytestmark = pytest.mark.integration

PROMOTED = r"event='cert_promoted'"


def vault_leaf(lab: Lab) -> x509.Certificate:
    leaf = read_bundle(lab.vault.vault_cert).leaf
    assert leaf is not None
    return leaf


def test_seeded_vault_certificate_is_served(lab: Lab) -> None:
    """A seeded vault key leads to the vault's certificate on the TLS port."""
    lab.seed()
    lab.start_gateway()
    supervisor = lab.start_supervisor()
    supervisor.wait_for(PROMOTED, timeout=90)

    served = served_certificate(lab.https_port, LAB_DOMAIN, ca_file=lab.vault.ca_cert)
    expected = vault_leaf(lab)
    assert certificate_sha256(served) == fingerprint(expected)

    live = read_bundle(lab.cert_dir / "live.pem")
    assert live.leaf is not None
    assert fingerprint(live.leaf) == fingerprint(expected)
    assert live.key is not None
    assert public_key_sha256(live.key) == public_key_sha256(expected.public_key())
    assert len(live.chain) == 1
    assert stat.S_IMODE((lab.cert_dir / "live.pem").stat().st_mode) == 0o600


def test_csr_carries_seeded_key(lab: Lab) -> None:
    """The key hash printed at start equals the key hash of HAProxy's CSR."""
    lab.seed()
    lab.start_gateway()
    supervisor = lab.start_supervisor()
    supervisor.wait_for(PROMOTED, timeout=90)
    assert lab.gateway is not None

    printed = supervisor.wait_for(r"ACME reusable key public sha256: ([0-9a-f]{64})")
    finalized = lab.gateway.wait_for(r"finalize_csr_public_sha256='?([0-9a-f]{64})")
    assert printed.group(1) == finalized.group(1)
    assert "Successful update of the certificate" in supervisor.output()


def test_foreign_key_bundle_is_rejected(lab: Lab) -> None:
    """Without the vault key, HAProxy stages a mismatched pair and it stays out."""
    lab.start_gateway()
    supervisor = lab.start_supervisor(CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0")
    rejected = supervisor.wait_for(r"event='staged_bundle_rejected'.*$", timeout=90)

    line = rejected.group(0)
    assert "key_public_sha256=" in line
    assert "certificate_public_sha256=" in line
    assert public_key_sha256(vault_leaf(lab).public_key()) in line
    assert PROMOTED.strip("'") not in supervisor.output()

    bootstrap = read_bundle(lab.cert_dir / "bootstrap.pem").leaf
    assert bootstrap is not None
    served = served_certificate(lab.https_port, LAB_DOMAIN)
    assert certificate_sha256(served) == fingerprint(bootstrap)
    assert (lab.cert_dir / "live.pem").read_bytes() == (
        lab.cert_dir / "bootstrap.pem"
    ).read_bytes()


def test_mismatched_seed_stops_start(lab: Lab) -> None:
    """A seed whose key does not fit its certificate stops the start with code 66."""
    lab.cert_dir.mkdir(mode=0o700)
    seed = lab.cert_dir / "certlocker.acme.pem"
    other_key = read_bundle(lab.cert_dir.parent / "vault" / "ca.key.pem").key
    assert other_key is not None
    from haproxy_acme_supervisor.pem import PemBundle

    seed.write_bytes(PemBundle(other_key, (vault_leaf(lab),)).to_pem())
    before = seed.read_bytes()

    supervisor = lab.start_supervisor(ACME_DIRECTORY="https://127.0.0.1:9/directory")
    assert supervisor.wait(timeout=30) == 66
    output = supervisor.output()
    assert "does not match the certificate" in output
    assert "PRIVATE KEY" not in output
    assert "haproxy_started" not in output
    assert seed.read_bytes() == before


def test_sigterm_after_promotion_exits_zero(lab: Lab) -> None:
    """SIGTERM after a promotion stops HAProxy and the supervisor with code 0."""
    lab.seed()
    lab.start_gateway()
    supervisor = lab.start_supervisor()
    supervisor.wait_for(PROMOTED, timeout=90)

    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(timeout=20) == 0
    assert re.search(r"event='supervisor_stopped'", supervisor.output())


def promote_and_stop(lab: Lab) -> None:
    """Run the supervisor until it promotes the vault certificate, then stop it."""
    lab.seed()
    lab.start_gateway()
    first = lab.start_supervisor("first")
    first.wait_for(PROMOTED, timeout=90)
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0


def test_restart_without_change_skips_order(lab: Lab) -> None:
    """A restart with a valid promoted live.pem sends the CA no new order."""
    promote_and_stop(lab)

    record = json.loads((lab.cert_dir / "live.json").read_text())
    assert record["acme_directory"] == lab.directory_url

    second = lab.start_supervisor("second")
    second.wait_for(r"event='renew_on_start'.*decision='skip'")
    served = served_certificate(lab.https_port, LAB_DOMAIN, ca_file=lab.vault.ca_cert)
    assert certificate_sha256(served) == fingerprint(vault_leaf(lab))
    assert "acme_renew_requested" not in second.output()


def test_changed_directory_orders_at_restart(lab: Lab) -> None:
    """A restart pointed at another ACME directory orders although live.pem is valid."""
    promote_and_stop(lab)
    old_directory = lab.directory_url

    lab.start_gateway()
    assert lab.directory_url != old_directory
    second = lab.start_supervisor("second")
    decision = second.wait_for(r"^.*event='renew_on_start'.*$")
    assert "decision='order'" in decision.group(0)
    assert old_directory in decision.group(0)
    second.wait_for(r"event='acme_renew_requested'")
