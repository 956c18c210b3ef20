"""http-01 validation against one configured loopback address (RFC 8555 section 8.3).

The validator never resolves the domain: it connects to the configured
loopback host and port and sends the domain in the Host header, so HAProxy's
frontend receives the same request a real CA would send. Redirects are not followed,
because following one could lead away from loopback.
"""

import http.client
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

_log = structlog.get_logger()

CHALLENGE_PATH = "/.well-known/acme-challenge/"
# Maximum response body read, in bytes. A key authorization is about 90 bytes.
MAX_BODY = 4096


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of one challenge validation, with ``error_kind`` an ACME error name."""

    valid: bool
    error_kind: str = ""
    detail: str = ""


ResultCallback = Callable[[ValidationResult], None]


class Http01Validator:
    """Runs http-01 validations in background threads.

    HAProxy may publish its challenge map entry just after it responds to the
    challenge POST, so a validation tries ``attempts`` times, ``retry_delay``
    seconds apart, before it reports failure.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 80,
        attempts: int = 5,
        retry_delay: float = 0.5,
        timeout: float = 2.0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"http-01 host {host} is not a loopback address")
        self.host = host
        self.port = port
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self.timeout = timeout
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(
        self,
        domain: str,
        token: str,
        key_authorization: str,
        on_done: ResultCallback,
    ) -> None:
        """Validate in a new thread and pass the result to ``on_done``."""
        thread = threading.Thread(
            target=self._run,
            args=(domain, token, key_authorization, on_done),
            name=f"http01-{domain}",
            daemon=True,
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop retrying and wait up to ``timeout`` seconds for running validations."""
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def _run(
        self,
        domain: str,
        token: str,
        key_authorization: str,
        on_done: ResultCallback,
    ) -> None:
        result = ValidationResult(False, "connection", "validation was not attempted")
        for attempt in range(1, self.attempts + 1):
            result = self.check_once(domain, token, key_authorization)
            if result.valid:
                break
            _log.debug(
                "http01_attempt_failed",
                domain=domain,
                attempt=attempt,
                detail=result.detail,
            )
            if self._stopping.wait(self.retry_delay):
                break
        on_done(result)

    def check_once(
        self, domain: str, token: str, key_authorization: str
    ) -> ValidationResult:
        """Fetch the challenge resource once and compare it to the key authorization."""
        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout
        )
        try:
            connection.request("GET", CHALLENGE_PATH + token, headers={"Host": domain})
            response = connection.getresponse()
            body = response.read(MAX_BODY)
        except (OSError, http.client.HTTPException) as exc:
            return ValidationResult(
                False, "connection", f"fetching {self.host}:{self.port} failed: {exc}"
            )
        finally:
            connection.close()

        if response.status != 200:
            return ValidationResult(
                False, "incorrectResponse", f"HTTP status {response.status}"
            )
        # RFC 8555 section 8.3 lets the server ignore trailing whitespace.
        # Leading whitespace is ignored as well.
        if body.strip() != key_authorization.encode("ascii"):
            return ValidationResult(
                False,
                "incorrectResponse",
                "response body does not match the key authorization",
            )
        return ValidationResult(True)
