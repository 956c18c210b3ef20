"""Stop latency: time from SIGTERM to the supervisor's exit, as PID 1.

Three cases, each repeated N times with a fresh supervisor in its own PID
namespace (``unshare``, so root is needed):

- idle: HAProxy runs, no client is connected, and no ACME order is under way
  (``ACME_RENEW_ON_START=never``), as after a restart with a valid live.pem;
- keep-alive: the same with 50 plain HTTP keep-alive connections open, each
  having completed one request and waiting idle for the next;
- ordering: idle, but HAProxy's ACME client is retrying an order against a
  closed port. Its retry timer (3 s for the first retry) keeps the
  soft-stopping worker alive, so this case shows the cost of stopping mid-order.

The clock starts just before SIGTERM is sent to the supervisor and stops when
``unshare`` reports its exit. The figures are printed with their ratio to the
10 s a container runtime waits before it sends SIGKILL; nothing is asserted.

Usage, from the repository root after ``make setup``::

    .venv/bin/python bench/stop_latency.py [--runs 5] [--connections 50]

``HAPROXY_BIN`` chooses the HAProxy build (default ``.venv/bin/haproxy``).
"""

import argparse
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness import free_port  # noqa: E402
from tests.integration.pid1_support import (  # noqa: E402
    CLOSED_DIRECTORY,
    NamespacedSupervisor,
    write_template,
)

CONTAINER_KILL_TIMEOUT_SECONDS = 10.0
READY = r"event='admin_socket_ready'"


def supervisor_env(root: Path, plain_port: int, renew_on_start: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HAPROXY_BIN=os.environ.get("HAPROXY_BIN", str(REPO / ".venv/bin/haproxy")),
        HAPROXY_CONFIG_TEMPLATE=str(
            write_template(root / "bench.cfg.j2", plain_port=plain_port)
        ),
        CERT_DIR=str(root / "certs"),
        RUN_DIR=str(root / "run"),
        ACME_DIRECTORY=CLOSED_DIRECTORY,
        ACME_DOMAINS="lab.local",
        CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0",
        HTTP_BIND=f"127.0.0.1:{free_port()}",
        HTTPS_BIND=f"127.0.0.1:{free_port()}",
        STOP_GRACE_SECONDS="10",
        ACME_RENEW_ON_START=renew_on_start,
    )
    return env


def open_keep_alive(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections, each after one complete keep-alive request."""
    request = b"GET / HTTP/1.1\r\nHost: lab.local\r\n\r\n"
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(request)
        answer = b""
        while not answer.endswith(b"ok\n"):
            chunk = connection.recv(4096)
            if not chunk:
                raise RuntimeError("HAProxy closed a keep-alive connection")
            answer += chunk
        connections.append(connection)
    return connections


def measure_once(root: Path, connections: int, renew_on_start: str) -> float:
    """Start a supervisor, open the connections, SIGTERM it; seconds to exit."""
    plain_port = free_port()
    supervisor = NamespacedSupervisor(
        supervisor_env(root, plain_port, renew_on_start), root / "supervisor.log"
    )
    clients: list[socket.socket] = []
    try:
        supervisor.wait_for(READY, timeout=60)
        clients = open_keep_alive(plain_port, connections)
        started = time.monotonic()
        supervisor.signal(signal.SIGTERM)
        code = supervisor.wait(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
        supervisor.stop()
    if code != 0:
        raise RuntimeError(f"supervisor exited with {code}; see {root}")
    return elapsed


def report(label: str, seconds: list[float]) -> None:
    median = statistics.median(seconds) * 1000
    worst = max(seconds) * 1000
    ratio = max(seconds) / CONTAINER_KILL_TIMEOUT_SECONDS
    print(
        f"{label:<24} runs={len(seconds)} median={median:7.1f} ms "
        f"max={worst:7.1f} ms  max/10s={ratio:.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    arguments = parser.parse_args()

    cases = [
        ("idle", 0, "never"),
        (f"{arguments.connections} keep-alive", arguments.connections, "never"),
        ("ordering", 0, "always"),
    ]
    for label, connections, renew_on_start in cases:
        seconds = []
        for _ in range(arguments.runs):
            with tempfile.TemporaryDirectory(prefix="stop-latency-") as root:
                seconds.append(measure_once(Path(root), connections, renew_on_start))
        report(label, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
