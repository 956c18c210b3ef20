"""The Let's Encrypt path against Pebble: issuance, restarts and renewals.

Every test except the one that turns it off has HAProxy verify Pebble's HTTPS
certificate against the test CA given as ACME_CA_FILE, and Pebble validates
http-01 by fetching the token from the supervisor's HTTP port.
"""

import datetime
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from haproxy_acme_supervisor.pem import (
    PemBundle,
    fingerprint,
    public_key_sha256,
    read_bundle,
)
from haproxy_acme_supervisor.renewal import RENEWAL_MARGIN

from ..certificates import certificate_pem
from ..harness import ManagedProcess, served_certificate
from .pebble import (
    PEBBLE_DOMAIN,
    HandshakeProbe,
    Pebble,
    PebbleLab,
    craft_live,
    first_handshake,
)

pytestmark = pytest.mark.integration

PROMOTED = r"event='cert_promoted'.*? serial='([0-9A-Fa-f]+)'"
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
# An order takes about 10 s: HAProxy waits 5 s between some ACME steps.
ORDER_TIMEOUT = 90.0


def wait_for_promotion(supervisor: ManagedProcess, timeout: float) -> str:
    """Wait for ``cert_promoted``; return its serial as Pebble logs serials."""
    match = supervisor.wait_for(PROMOTED, timeout=timeout)
    return match.group(1).lower().lstrip("0")


def wait_until(condition: Callable[[], bool], timeout: float, description: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {description}"
            )
        time.sleep(0.05)


def event_time(line: str) -> datetime.datetime:
    """Return the timestamp of one supervisor log line."""
    match = re.search(r"timestamp='([^']+)'", line)
    assert match is not None, line
    return datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))


def write_roots(path: Path, *roots: x509.Certificate) -> Path:
    path.write_bytes(b"".join(certificate_pem(root) for root in roots))
    return path


def live_bundle(lab: PebbleLab) -> PemBundle:
    bundle = read_bundle(lab.live_path)
    assert bundle.leaf is not None
    return bundle


def promote_first_certificate(lab: PebbleLab) -> tuple[Pebble, ManagedProcess]:
    """Start Pebble and a seeded supervisor, and wait for the first promotion."""
    pebble = lab.start_pebble()
    lab.seed()
    supervisor = lab.start_supervisor("first")
    serial = wait_for_promotion(supervisor, ORDER_TIMEOUT)
    assert serial in pebble.issued_serials()
    return pebble, supervisor


def test_seeded_key_certificate_is_served(pebble_lab: PebbleLab) -> None:
    """With reuse-key on, Pebble certifies the seeded key and its chain verifies."""
    pebble = pebble_lab.start_pebble()
    seed = pebble_lab.seed()
    supervisor = pebble_lab.start_supervisor()
    serial = wait_for_promotion(supervisor, ORDER_TIMEOUT)
    assert serial in pebble.issued_serials()

    roots = write_roots(pebble_lab.root / "roots.pem", pebble.root_certificate())
    served = served_certificate(pebble_lab.https_port, PEBBLE_DOMAIN, ca_file=roots)
    live = live_bundle(pebble_lab)
    assert live.leaf is not None
    assert fingerprint(served) == fingerprint(live.leaf)
    assert seed.key is not None
    assert public_key_sha256(served.public_key()) == public_key_sha256(seed.key)
    assert len(live.chain) >= 1
    assert live.leaf.issuer == live.chain[0].subject


def test_reuse_key_off_serves_new_key(pebble_lab: PebbleLab) -> None:
    """With reuse-key off, a new key is certified and live.pem carries it."""
    pebble = pebble_lab.start_pebble()
    seed = pebble_lab.seed()
    supervisor = pebble_lab.start_supervisor(ACME_REUSE_KEY="off")
    serial = wait_for_promotion(supervisor, ORDER_TIMEOUT)
    assert serial in pebble.issued_serials()

    roots = write_roots(pebble_lab.root / "roots.pem", pebble.root_certificate())
    served = served_certificate(pebble_lab.https_port, PEBBLE_DOMAIN, ca_file=roots)
    live = live_bundle(pebble_lab)
    assert live.leaf is not None
    assert live.key is not None
    assert seed.key is not None
    assert fingerprint(served) == fingerprint(live.leaf)
    assert public_key_sha256(served.public_key()) != public_key_sha256(seed.key)
    assert public_key_sha256(live.key) == public_key_sha256(live.leaf.public_key())


def test_rejected_nonces_are_retried(pebble_lab: PebbleLab) -> None:
    """A CA that rejects one nonce in five still issues, through HAProxy's retries.

    HAProxy 3.2 and 3.4 retry a badNonce error like any other error, after 3,
    9, 27 and 81 s, and abort the order when one request fails five times in a
    row. An order sends about nine signed requests, so at 20% it aborts in
    about 0.3% of runs, and in about 13% Pebble rejects no nonce at all, which
    is reported as a skip. At 60% most orders would abort.
    """
    pebble = pebble_lab.start_pebble(PEBBLE_WFE_NONCEREJECT="20")
    pebble_lab.seed()
    supervisor = pebble_lab.start_supervisor()
    serial = wait_for_promotion(supervisor, timeout=240)
    assert serial in pebble.issued_serials()
    if BAD_NONCE not in supervisor.output():
        pytest.skip("Pebble happened to reject no nonce in this run")


def test_insecure_skip_verify_warns_at_start(pebble_lab: PebbleLab) -> None:
    """ACME_INSECURE_SKIP_VERIFY=1 logs a warning at start and reaches the CA."""
    pebble = pebble_lab.start_pebble()
    pebble_lab.seed()
    supervisor = pebble_lab.start_supervisor(
        ACME_INSECURE_SKIP_VERIFY="1", ACME_CA_FILE=""
    )
    warning = supervisor.wait_for(r"^.*event='acme_tls_verification_disabled'.*$")
    started = supervisor.wait_for(r"^.*event='haproxy_started'.*$")
    assert "level='warning'" in warning.group(0)
    assert warning.start() < started.start()
    wait_until(lambda: pebble.order_requests() >= 1, 30, "a new-order request")


def test_untrusted_directory_gets_no_request(pebble_lab: PebbleLab) -> None:
    """Without the CA file, HAProxy rejects Pebble's certificate and sends nothing."""
    pebble = pebble_lab.start_pebble()
    pebble_lab.seed()
    supervisor = pebble_lab.start_supervisor(ACME_CA_FILE="")
    supervisor.wait_for(r"acme: .*getting directory URL.*retrying", timeout=30)

    assert "acme_tls_verification_disabled" not in supervisor.output()
    assert "GET /dir" not in pebble.output()
    assert pebble.order_requests() == 0


def test_restart_serves_promoted_without_order(pebble_lab: PebbleLab) -> None:
    """A restart serves the promoted certificate at once and orders nothing."""
    pebble, first = promote_first_certificate(pebble_lab)
    promoted = live_bundle(pebble_lab).leaf
    assert promoted is not None
    orders = pebble.order_requests()
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0

    with ThreadPoolExecutor(max_workers=1) as pool:
        handshake = pool.submit(
            first_handshake, pebble_lab.https_port, PEBBLE_DOMAIN, 60.0
        )
        second = pebble_lab.start_supervisor("second")
        first_served = handshake.result(timeout=90)
    assert first_served.failed_attempts > 0
    assert fingerprint(first_served.leaf) == fingerprint(promoted)

    second.wait_for(r"event='renew_on_start'.*decision='skip'")
    # An order would follow renew_on_start within milliseconds; 5 s of quiet
    # also covers the watch loop's first pass.
    time.sleep(5)
    assert pebble.order_requests() == orders
    assert "acme_renew_requested" not in second.output()
    assert second.process.poll() is None


def test_due_certificate_is_renewed_while_serving(pebble_lab: PebbleLab) -> None:
    """A certificate falling due is replaced with no restart or failed handshake."""
    pebble = pebble_lab.start_pebble()
    seed = pebble_lab.seed()
    assert isinstance(seed.key, ec.EllipticCurvePrivateKey)
    # Certificates carry whole seconds, so the due time does too.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    due_at = now + datetime.timedelta(seconds=15)
    crafted = craft_live(PEBBLE_DOMAIN, not_after=due_at + RENEWAL_MARGIN, key=seed.key)
    pebble_lab.write_live(crafted.pem)
    roots = write_roots(
        pebble_lab.root / "roots.pem", crafted.root, pebble.root_certificate()
    )

    supervisor = pebble_lab.start_supervisor()
    supervisor.wait_for(r"event='renew_on_start'.*decision='skip'")
    probe = HandshakeProbe(pebble_lab.https_port, PEBBLE_DOMAIN, roots)
    probe.start()
    try:
        due = supervisor.wait_for(r"^.*event='renewal_due'.*$", timeout=60)
        serial = wait_for_promotion(supervisor, ORDER_TIMEOUT)
        promoted = live_bundle(pebble_lab).leaf
        assert promoted is not None
        wait_until(
            lambda: fingerprint(promoted) in probe.fingerprints,
            10,
            "a handshake with the renewed certificate",
        )
        # Keep shaking hands for 2 s after the switch.
        time.sleep(2)
    finally:
        probe.stop()

    assert probe.failures == []
    assert probe.fingerprints == [fingerprint(crafted.leaf), fingerprint(promoted)]
    assert serial in pebble.issued_serials()
    assert event_time(due.group(0)) >= due_at
    assert event_time(due.group(0)) < due_at + datetime.timedelta(seconds=5)
    assert supervisor.output().count("event='haproxy_started'") == 1
    assert supervisor.process.poll() is None


def test_renew_on_start_always_orders(pebble_lab: PebbleLab) -> None:
    """ACME_RENEW_ON_START=always orders even though live.pem is far from due."""
    pebble = pebble_lab.start_pebble()
    pebble_lab.seed()
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=80)
    pebble_lab.write_live(craft_live(PEBBLE_DOMAIN, not_after=not_after).pem)

    supervisor = pebble_lab.start_supervisor(ACME_RENEW_ON_START="always")
    supervisor.wait_for(
        r"event='renew_on_start'.*decision='order'.*ACME_RENEW_ON_START=always"
    )
    serial = wait_for_promotion(supervisor, ORDER_TIMEOUT)
    assert serial in pebble.issued_serials()
    assert pebble.order_requests() == 1

    served = served_certificate(pebble_lab.https_port, PEBBLE_DOMAIN)
    live = live_bundle(pebble_lab)
    assert live.leaf is not None
    assert fingerprint(served) == fingerprint(live.leaf)
