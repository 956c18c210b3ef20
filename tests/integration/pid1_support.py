"""The supervisor as PID 1 of its own PID namespace, and what runs inside it.

``unshare --pid --fork --mount-proc`` makes the supervisor PID 1 of a new PID
namespace, so it inherits orphans and gets the kernel's init treatment of
signals, as in a container. ``unshare`` itself blocks SIGINT and SIGTERM and
forwards nothing, so signals go to the supervisor's host PID, the child of
``unshare``. ``--kill-child`` makes sure a killed ``unshare`` takes the whole
namespace with it.

Nothing here needs pytest, so ``bench/`` can use it too.
"""

import contextlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..harness import REPO, ManagedProcess

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
TEMPLATE = REPO / "haproxy" / "haproxy.cfg.j2"
DEFAULT_ANSWER = "No backend is configured behind this HAProxy."
CLOSED_DIRECTORY = "https://127.0.0.1:9/directory"


def children(pid: int) -> list[int]:
    """PIDs (host view) whose parent is ``pid``."""
    return [other for other in _all_pids() if _status(other).get("PPid") == str(pid)]


def state(pid: int) -> str:
    """The one-letter process state of ``pid`` ("Z" for a zombie), or "" if gone."""
    return _status(pid).get("State", "")[:1]


def command_name(pid: int) -> str:
    """The short command name of ``pid``, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


class NamespacedSupervisor:
    """``haproxy-acme-supervisor run`` as PID 1 of a new PID namespace."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        unbuffered: bool = True,
    ) -> None:
        python = [sys.executable, *(["-u"] if unbuffered else [])]
        argv = [*UNSHARE, *python, "-m", "haproxy_acme_supervisor", "run"]
        self.process = ManagedProcess(argv, log_path, env=env)
        self.pid = self._wait_for_child()

    def _wait_for_child(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = children(self.process.pid)
            if found:
                return found[0]
            time.sleep(0.005)
        raise AssertionError(f"unshare {self.process.pid} started no child")

    def wait_for_blocked(self, signal_number: int, timeout: float = 10.0) -> None:
        """Wait until PID 1 has ``signal_number`` blocked, as the supervisor does
        first thing, before its slow imports and long before its handlers.
        """
        bit = 1 << (signal_number - 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = Path(f"/proc/{self.pid}/status").read_text()
            blocked = next(
                line for line in status.splitlines() if line.startswith("SigBlk:")
            )
            command = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            is_supervisor = b"haproxy_acme_supervisor" in command
            if is_supervisor and int(blocked.split()[1], 16) & bit:
                return
            time.sleep(0.001)
        raise AssertionError(f"PID {self.pid} did not block signal {signal_number}")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> Any:
        """Wait until the log matches ``pattern``; returns the match."""
        return self.process.wait_for(pattern, timeout)

    def output(self) -> str:
        return self.process.output()

    def signal(self, signal_number: int) -> None:
        """Send a signal to the supervisor itself (PID 1 inside)."""
        os.kill(self.pid, signal_number)

    def wait(self, timeout: float = 30.0) -> int:
        """The supervisor's exit code, as ``unshare`` passes it on."""
        return self.process.wait(timeout)

    @property
    def running(self) -> bool:
        return self.process.process.poll() is None

    def haproxy_master(self, timeout: float = 10.0) -> int:
        """Host PID of the HAProxy master, the supervisor's ``haproxy -W`` child."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in children(self.pid):
                if " -W " in _command_line(pid):
                    return pid
            time.sleep(0.02)
        raise AssertionError("no HAProxy master under the supervisor")

    def haproxy_workers(self) -> list[int]:
        return children(self.haproxy_master())

    def namespace_pids(self) -> list[int]:
        """Host PIDs of every process in the supervisor's PID namespace."""
        namespace = _namespace(self.pid)
        return [
            pid for pid in _all_pids() if namespace and _namespace(pid) == namespace
        ]

    def zombies(self) -> list[int]:
        """Zombies in the namespace: exit statuses that were never collected."""
        return [pid for pid in self.namespace_pids() if state(pid) == "Z"]

    def stop(self) -> None:
        """SIGTERM the supervisor; SIGKILL it (and so the namespace) if it hangs."""
        if self.running:
            try:
                self.signal(signal.SIGTERM)
                self.process.process.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.stop(timeout=10)


def write_template(
    path: Path,
    *,
    answer: str = DEFAULT_ANSWER,
    slow_port: int | None = None,
    plain_port: int | None = None,
    tls_extra: str = "",
) -> Path:
    """Write a copy of the packaged template with test additions.

    ``answer`` replaces the TLS frontend's 503 text; ``slow_port`` sends
    ``/slow`` to a backend on that loopback port; ``plain_port`` adds a plain
    HTTP frontend with keep-alive that answers 200 itself; ``tls_extra`` is
    appended to the TLS frontend as it is.
    """
    source = TEMPLATE.read_text()
    rule = 'http-request return status 503 content-type text/plain string "{}\\n"'
    original = rule.format(DEFAULT_ANSWER)
    assert original in source, "the packaged template's 503 rule changed"

    replacement = rule.format(answer)
    if slow_port is not None:
        replacement += " unless { path_beg /slow }\n    use_backend slow"
    replacement += tls_extra
    source = source.replace(original, replacement)
    if slow_port is not None:
        source += f"\nbackend slow\n    server slow 127.0.0.1:{slow_port}\n"
    if plain_port is not None:
        source += (
            f"\nfrontend plain\n    bind 127.0.0.1:{plain_port}\n"
            "    http-request return status 200 content-type text/plain"
            ' string "ok\\n"\n'
        )
    path.write_text(source)
    return path


class SlowServer:
    """A loopback HTTP server that responds to each request after ``delay`` seconds."""

    BODY = b"slow answer " * 1000

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.received.set()
                time.sleep(server.delay)
                # A hard stop cuts the connection before the response is sent.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(server.BODY)))
                    self.end_headers()
                    self.wfile.write(server.BODY)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def unverified_tls() -> ssl.SSLContext:
    """A client context that accepts the bootstrap certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def https_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """GET ``path`` over TLS on 127.0.0.1:``port``; returns status and body."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=timeout, context=unverified_tls()
    )
    try:
        connection.request("GET", path, headers={"Host": "lab.local"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
