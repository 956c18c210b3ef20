"""Lifecycle cases outside the happy path: locks and HAProxy stopped from outside."""

import os
import signal
import socket
import time

import pytest

from .conftest import Lab

pytestmark = pytest.mark.integration

# No CA listens here, so HAProxy's ACME client only retries; these tests do
# not need an order.
CLOSED_DIRECTORY = "https://127.0.0.1:9/directory"
READY = r"event='admin_socket_ready'"


def haproxy_master_pid(output: str) -> int:
    """Return the master's PID from the supervisor's haproxy_started event."""
    for line in output.splitlines():
        if "event='haproxy_started'" in line:
            return int(line.split("pid=")[1].split()[0])
    raise AssertionError("no haproxy_started event in the output")


def wait_for_event_stream(lab: Lab, timeout: float = 15.0) -> None:
    """Wait until the supervisor's ``show events -w`` session is open.

    ``show sess`` lists every CLI session as ``fe=GLOBAL``; with the event
    stream open there are two, the stream and the ``show sess`` itself.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(lab.run_dir / "admin.sock"))
            client.sendall(b"show sess\n")
            answer = b"".join(iter(lambda: client.recv(65536), b""))
        if answer.count(b"fe=GLOBAL") >= 2:
            return
        time.sleep(0.1)
    raise AssertionError(f"no event stream session within {timeout} s")


def test_second_supervisor_on_run_dir_refused(lab: Lab) -> None:
    """A second supervisor on the same RUN_DIR exits 77 and leaves the first alone."""
    first = lab.start_supervisor(
        "first",
        ACME_DIRECTORY=CLOSED_DIRECTORY,
        CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0",
    )
    first.wait_for(READY)
    second = lab.start_supervisor(
        "second",
        ACME_DIRECTORY=CLOSED_DIRECTORY,
        CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0",
        CERT_DIR=str(lab.root / "other-certs"),
        HTTP_BIND="127.0.0.1:1",
        HTTPS_BIND="127.0.0.1:2",
    )

    assert second.wait(timeout=20) == 77
    assert "is in use by another supervisor" in second.output()
    assert f"PID {first.pid}" in second.output()
    assert first.process.poll() is None


def test_master_soft_stopped_outside_exits_76(lab: Lab) -> None:
    """SIGUSR1 sent to HAProxy's master from outside ends the supervisor with 76."""
    supervisor = lab.start_supervisor(
        ACME_DIRECTORY=CLOSED_DIRECTORY, CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0"
    )
    supervisor.wait_for(READY)
    # The stream is what would hold the soft-stopping worker.
    wait_for_event_stream(lab)
    os.kill(haproxy_master_pid(supervisor.output()), signal.SIGUSR1)

    assert supervisor.wait(timeout=30) == 76
    assert "event='admin_socket_lost'" in supervisor.output()


def test_master_stopped_outside_exits_76(lab: Lab) -> None:
    """SIGTERM sent to HAProxy's master from outside is no clean stop: code 76."""
    supervisor = lab.start_supervisor(
        ACME_DIRECTORY=CLOSED_DIRECTORY, CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0"
    )
    supervisor.wait_for(READY)
    os.kill(haproxy_master_pid(supervisor.output()), signal.SIGTERM)

    assert supervisor.wait(timeout=20) == 76
    assert "event='haproxy_exited_unexpectedly'" in supervisor.output()
