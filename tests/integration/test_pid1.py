"""The supervisor as PID 1 of a PID namespace, with real processes and signals.

Nothing here needs a certificate to be issued, so ACME_DIRECTORY points at a
closed loopback port and HAProxy's ACME client just retries in the background.
"""

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..harness import free_port
from .pid1_support import (
    CLOSED_DIRECTORY,
    NamespacedSupervisor,
    SlowServer,
    children,
    command_name,
    https_get,
    state,
    write_template,
)

pytestmark = pytest.mark.integration

READY = r"event='admin_socket_ready'"
Start = Callable[..., NamespacedSupervisor]


@pytest.fixture
def ports() -> dict[str, int]:
    return {"http": free_port(), "https": free_port()}


@pytest.fixture
def start(tmp_path: Path, haproxy_bin: Path, ports: dict[str, int]) -> Iterator[Start]:
    """Start supervisors as PID 1 of their own namespace; all stopped afterwards."""
    started: list[NamespacedSupervisor] = []

    def start(unbuffered: bool = True, **overrides: str) -> NamespacedSupervisor:
        env = dict(os.environ)
        env.update(
            HAPROXY_BIN=str(haproxy_bin),
            CERT_DIR=str(tmp_path / "certs"),
            RUN_DIR=str(tmp_path / "run"),
            ACME_DIRECTORY=CLOSED_DIRECTORY,
            ACME_DOMAINS="lab.local",
            CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0",
            HTTP_BIND=f"127.0.0.1:{ports['http']}",
            HTTPS_BIND=f"127.0.0.1:{ports['https']}",
            STOP_GRACE_SECONDS="10",
        )
        env.update(overrides)
        if not unbuffered:
            env.pop("PYTHONUNBUFFERED", None)
        log_path = tmp_path / f"supervisor-{len(started)}.log"
        supervisor = NamespacedSupervisor(env, log_path, unbuffered=unbuffered)
        started.append(supervisor)
        return supervisor

    try:
        yield start
    finally:
        for supervisor in started:
            supervisor.stop()


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer(delay=2.0)
    try:
        yield server
    finally:
        server.close()


def request_in_background(port: int, path: str) -> tuple[threading.Thread, dict]:
    """Run ``https_get`` in a thread; its result or error lands in the dict."""
    result: dict = {}

    def fetch() -> None:
        try:
            result["answer"] = https_get(port, path)
        except Exception as exc:  # the assertion shows which one
            result["error"] = exc

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    return thread, result


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} within {timeout} s")


class TestStopSignals:
    @pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
    def test_stop_completes_requests_in_flight(
        self,
        start: Start,
        tmp_path: Path,
        ports: dict[str, int],
        slow_server: SlowServer,
        stop_signal: signal.Signals,
    ) -> None:
        """A stop signal lets a request in flight finish, then exits 0."""
        template = write_template(tmp_path / "t.cfg.j2", slow_port=slow_server.port)
        supervisor = start(HAPROXY_CONFIG_TEMPLATE=str(template))
        supervisor.wait_for(READY)

        thread, result = request_in_background(ports["https"], "/slow")
        assert slow_server.received.wait(10), "the request never reached the backend"
        supervisor.signal(stop_signal)

        assert supervisor.wait(timeout=20) == 0
        thread.join(10)
        assert result.get("answer") == (200, SlowServer.BODY), result
        assert f"signal='{stop_signal.name}'" in supervisor.output()
        assert "event='supervisor_stopped'" in supervisor.output()

    def test_second_stop_signal_forces_hard_stop(
        self,
        start: Start,
        tmp_path: Path,
        ports: dict[str, int],
        slow_server: SlowServer,
    ) -> None:
        """A second SIGTERM during the grace period stops at once, still with 0."""
        slow_server.delay = 30.0
        template = write_template(tmp_path / "t.cfg.j2", slow_port=slow_server.port)
        supervisor = start(
            HAPROXY_CONFIG_TEMPLATE=str(template), STOP_GRACE_SECONDS="60"
        )
        supervisor.wait_for(READY)
        request_in_background(ports["https"], "/slow")
        assert slow_server.received.wait(10)

        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for(r"event='haproxy_signalled'.*signal='SIGUSR1'")
        time.sleep(0.5)
        assert supervisor.running, "the soft stop did not wait for the request"
        forced_at = time.monotonic()
        supervisor.signal(signal.SIGTERM)

        assert supervisor.wait(timeout=10) == 0
        assert time.monotonic() - forced_at < 5
        assert "event='stop_forced'" in supervisor.output()

    def test_stop_escalates_to_sigkill_and_exits_137(self, start: Start) -> None:
        """A master that ignores the stop is killed after the grace period: 137."""
        supervisor = start(STOP_GRACE_SECONDS="1")
        supervisor.wait_for(READY)
        master = supervisor.haproxy_master()
        os.kill(master, signal.SIGSTOP)

        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 137
        output = supervisor.output()
        assert "signal='SIGKILL'" in output
        assert "event='haproxy_stop_slow'" in output

    def test_third_stop_signal_kills_haproxy(self, start: Start) -> None:
        """A third stop signal kills a master that ignores the hard stop: 137."""
        supervisor = start(STOP_GRACE_SECONDS="60")
        supervisor.wait_for(READY)
        os.kill(supervisor.haproxy_master(), signal.SIGSTOP)

        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for(r"event='haproxy_signalled'.*signal='SIGUSR1'")
        supervisor.signal(signal.SIGINT)
        supervisor.wait_for(r"event='stop_forced'.*sent='SIGTERM'")
        forced_at = time.monotonic()
        supervisor.signal(signal.SIGTERM)

        assert supervisor.wait(timeout=10) == 137
        assert time.monotonic() - forced_at < 5
        assert "sent='SIGKILL'" in supervisor.output()

    def test_stop_during_boot_exits_zero(self, start: Start) -> None:
        """A SIGTERM during boot cancels the boot and stops with code 0."""
        supervisor = start()
        supervisor.wait_for(r"event='haproxy_version'")
        supervisor.signal(signal.SIGTERM)

        assert supervisor.wait(timeout=40) == 0
        assert "event='supervisor_stopped'" in supervisor.output()

    def test_stop_before_handlers_exits(self, start: Start) -> None:
        """A SIGTERM sent while Python still imports is held, then acted on."""
        supervisor = start()
        supervisor.wait_for_blocked(signal.SIGTERM)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(timeout=8) == 0


class TestHAProxyExit:
    def test_master_killed_gives_137(self, start: Start) -> None:
        """SIGKILL of the HAProxy master ends the supervisor with 128 + 9."""
        supervisor = start()
        supervisor.wait_for(READY)
        os.kill(supervisor.haproxy_master(), signal.SIGKILL)

        assert supervisor.wait(timeout=20) == 137
        assert "event='haproxy_exited_unexpectedly'" in supervisor.output()

    def test_worker_crash_gives_master_code(self, start: Start) -> None:
        """A worker's SIGSEGV ends the supervisor with the code the master reports."""
        supervisor = start()
        supervisor.wait_for(READY)
        (worker,) = supervisor.haproxy_workers()
        os.kill(worker, signal.SIGSEGV)

        assert supervisor.wait(timeout=20) == 139
        assert "code=139" in supervisor.output()


class TestOrphans:
    def test_orphans_are_reaped(self, start: Start) -> None:
        """100 grandchildren left behind inside the namespace leave no zombie."""
        supervisor = start()
        supervisor.wait_for(READY)
        script = "(for i in $(seq 100); do (sleep 0.1 &) ; done) &"
        enter = ["nsenter", "-t", str(supervisor.pid), "-p", "-m"]
        subprocess.run([*enter, "sh", "-c", script], check=True, timeout=30)

        def sleepers() -> list[int]:
            adopted = children(supervisor.pid)
            return [pid for pid in adopted if command_name(pid) == "sleep"]

        wait_until(lambda: bool(sleepers()), 5, "no orphan was adopted")
        wait_until(lambda: not sleepers(), 10, "the orphans did not go")
        time.sleep(0.5)

        assert supervisor.running
        assert supervisor.zombies() == []
        assert all(state(pid) != "Z" for pid in children(supervisor.pid))


class TestReload:
    def test_good_template_reloads_without_refusing(
        self, start: Start, tmp_path: Path, ports: dict[str, int]
    ) -> None:
        """SIGHUP with a changed template changes the answer; the port never refuses."""
        template = write_template(tmp_path / "t.cfg.j2")
        supervisor = start(HAPROXY_CONFIG_TEMPLATE=str(template))
        supervisor.wait_for(READY)
        assert https_get(ports["https"], "/")[1].startswith(b"No backend")

        write_template(template, answer="Reloaded by the test.")
        refused, attempts = 0, 0
        supervisor.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            attempts += 1
            try:
                socket.create_connection(("127.0.0.1", ports["https"]), 1).close()
            except ConnectionRefusedError:
                refused += 1
            if "event='reloaded'" in supervisor.output():
                break
        assert "event='reloaded'" in supervisor.output()
        assert refused == 0, f"{refused} of {attempts} connections refused"
        assert https_get(ports["https"], "/") == (503, b"Reloaded by the test.\n")
        assert supervisor.running

    def test_broken_template_changes_nothing(
        self, start: Start, tmp_path: Path, ports: dict[str, int]
    ) -> None:
        """SIGHUP with a template HAProxy rejects is logged and changes nothing."""
        template = write_template(tmp_path / "t.cfg.j2")
        supervisor = start(HAPROXY_CONFIG_TEMPLATE=str(template))
        supervisor.wait_for(READY)
        rendered = tmp_path / "run" / "haproxy.cfg"
        before = rendered.read_bytes()

        write_template(
            template, answer="Must not be served.", tls_extra="\n    no-such-keyword"
        )
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for(r"event='reload_rejected'", timeout=20)

        assert supervisor.running
        assert https_get(ports["https"], "/")[1].startswith(b"No backend")
        assert rendered.read_bytes() == before
        assert "event='reloaded'" not in supervisor.output()


class TestExitCodes:
    def test_invalid_variable_gives_78(self, start: Start) -> None:
        """An invalid environment variable stops the start with 78."""
        supervisor = start(ACME_KEYTYPE="DSA")
        assert supervisor.wait(timeout=20) == 78
        assert "ACME_KEYTYPE" in supervisor.output()

    def test_missing_seed_gives_66(self, start: Start) -> None:
        """A missing seeded staging file with the check on stops the start with 66."""
        supervisor = start(CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="1")
        assert supervisor.wait(timeout=20) == 66
        assert "certlocker.acme.pem" in supervisor.output()

    def test_not_haproxy_gives_69(self, start: Start) -> None:
        """HAPROXY_BIN naming a program that is not HAProxy stops the start with 69."""
        supervisor = start(HAPROXY_BIN="/bin/true")
        assert supervisor.wait(timeout=20) == 69
        assert "did not print a HAProxy version" in supervisor.output()

    def test_haproxy_exiting_at_once_gives_69(
        self, start: Start, ports: dict[str, int]
    ) -> None:
        """A configuration that passes -c but cannot bind stops the start with 69."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", ports["http"]))
            taken.listen()
            supervisor = start()
            assert supervisor.wait(timeout=40) == 69
        output = supervisor.output()
        assert "event='config_rendered'" in output
        assert "before its admin socket" in output


class TestOutput:
    def test_lines_before_sigkill_are_in_the_log(self, start: Start) -> None:
        """Without -u, lines logged just before a SIGKILL are complete in the log."""
        supervisor = start(unbuffered=False)
        supervisor.wait_for(READY)
        master = supervisor.haproxy_master()
        supervisor.signal(signal.SIGKILL)

        # unshare reports a child killed by a signal as 1, not as -9.
        assert supervisor.wait(timeout=10) != 0
        output = supervisor.output()
        for event in ("config_rendered", "haproxy_started", "admin_socket_ready"):
            assert f"event='{event}'" in output
        assert output.endswith("\n")
        wait_until(lambda: state(master) == "", 10, "HAProxy outlived its PID 1")
