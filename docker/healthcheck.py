#!/opt/haproxy-acme-supervisor/bin/python3
"""Container health check: HAProxy responds and live.pem is usable.

Installed as /opt/haproxy-acme-supervisor/bin/healthcheck and run by the
image's HEALTHCHECK. Healthy (exit 0) means that HAProxy returns its process
information for ``show info`` on the admin socket ``$RUN_DIR/admin.sock``, and
that ``$CERT_DIR/live.pem`` parses, contains a private key that matches its
leaf certificate, and that the leaf is inside its validity window. Otherwise
it prints the reason on one line and exits 1, and Docker keeps that line in
the health log that ``docker inspect`` shows.
"""

import datetime
import os
import socket
import sys
from pathlib import Path

from haproxy_acme_supervisor.config import DEFAULT_CERT_DIR, DEFAULT_RUN_DIR
from haproxy_acme_supervisor.pem import PemError, public_key_sha256, read_bundle

SOCKET_TIMEOUT_SECONDS = 3.0
MAX_ANSWER_BYTES = 64 * 1024


def check_admin_socket(path: Path) -> str | None:
    """Send ``show info`` to the admin socket; return the failure, or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(SOCKET_TIMEOUT_SECONDS)
            client.connect(str(path))
            client.sendall(b"show info\n")
            answer = b""
            while chunk := client.recv(MAX_ANSWER_BYTES):
                answer += chunk
    except OSError as exc:
        return f"admin socket {path}: {exc}"
    if b"\nPid: " not in b"\n" + answer:
        return f"admin socket {path}: 'show info' returned no Pid line"
    return None


def check_live(path: Path, now: datetime.datetime) -> str | None:
    """Check the live bundle; return why it is unusable, or None when usable."""
    try:
        bundle = read_bundle(path)
    except (OSError, PemError) as exc:
        return f"{path}: {exc}"
    if bundle.key is None or bundle.leaf is None:
        return f"{path}: must contain a private key and a certificate"
    if public_key_sha256(bundle.key) != public_key_sha256(bundle.leaf.public_key()):
        return f"{path}: the private key does not match the leaf certificate"
    leaf = bundle.leaf
    if now < leaf.not_valid_before_utc:
        return f"{path}: the leaf is not valid before {leaf.not_valid_before_utc}"
    if now >= leaf.not_valid_after_utc:
        return f"{path}: the leaf expired at {leaf.not_valid_after_utc}"
    return None


def main() -> int:
    """Run both checks; print the first failure and return 1, or return 0."""
    run_dir = Path(os.environ.get("RUN_DIR") or DEFAULT_RUN_DIR)
    cert_dir = Path(os.environ.get("CERT_DIR") or DEFAULT_CERT_DIR)
    now = datetime.datetime.now(datetime.UTC)
    for failure in (
        check_admin_socket(run_dir / "admin.sock"),
        check_live(cert_dir / "live.pem", now),
    ):
        if failure is not None:
            print(f"unhealthy: {failure}", flush=True)
            return 1
    print("healthy", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
