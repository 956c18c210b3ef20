"""HTTPS front end of the lab ACME gateway.

A ``ThreadingHTTPServer`` serves the authority over TLS with the vault's
``gateway.pem``. The TLS handshake runs in the connection's own thread, not
in the accept loop, so a client that connects and stays silent cannot stall
the other clients. Every response carries a fresh ``Replay-Nonce``
(RFC 8555 section 6.5).
"""

import ipaddress
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import structlog

from haproxy_acme_supervisor.lab.authority import (
    PROBLEM_TYPE,
    LabAuthority,
    Reply,
    json_reply,
    problem_reply,
)
from haproxy_acme_supervisor.lab.errors import AcmeProblem
from haproxy_acme_supervisor.lab.http01 import Http01Validator
from haproxy_acme_supervisor.lab.vault import Vault

_log = structlog.get_logger()

# Maximum JWS body size in bytes. A finalize with an RSA-4096 CSR is about 3 KiB.
MAX_BODY = 64 * 1024
# Maximum length of a chunk-size or trailer line in a chunked body.
MAX_LINE = 1024
# Seconds an idle or slow connection is kept before its thread gives up.
CONNECTION_TIMEOUT = 10.0
JOSE_TYPE = "application/jose+json"
# Paths served by GET without a JWS. Every other resource takes POST only.
_GET_PATHS = ("/directory", "/new-nonce", "/lab/stats")


class Gateway:
    """The lab ACME server: bind on construction, then ``start`` or ``serve_forever``.

    ``port`` may be 0 to let the kernel choose; ``.port`` is the bound port.
    Both the listen address and the http-01 target must be loopback addresses.
    """

    def __init__(
        self,
        vault: Vault,
        host: str = "127.0.0.1",
        port: int = 0,
        http01_host: str = "127.0.0.1",
        http01_port: int = 80,
        http01_attempts: int = 5,
        http01_retry_delay: float = 0.5,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"listen address {host} is not a loopback address")
        self._validator = Http01Validator(
            http01_host, http01_port, http01_attempts, http01_retry_delay
        )
        server_class = _GatewayServer6 if ":" in host else _GatewayServer
        self._server = server_class((host, port), _make_tls_context(vault))
        self.host = host
        self.port: int = self._server.server_address[1]

        url_host = f"[{host}]" if ":" in host else host
        self.authority = LabAuthority(
            vault, f"https://{url_host}:{self.port}", self._validator
        )
        self._server.authority = self.authority
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False
        self._state_lock = threading.Lock()

    @property
    def directory_url(self) -> str:
        """The URL clients configure as the ACME directory."""
        return self.authority.urls.directory

    def start(self) -> None:
        """Serve in a background thread and return at once."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="lab-gateway", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop`` is called from another one."""
        with self._state_lock:
            if self._stopped:
                return
            self._serving = True
        _log.info(
            "gateway_started",
            directory=self.directory_url,
            http01=f"{self._validator.host}:{self._validator.port}",
        )
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving, close the socket and wait for running validations."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
            serving = self._serving
        # shutdown() waits for serve_forever to return, so it is only safe
        # when the loop runs or is about to run.
        if serving:
            self._server.shutdown()
        self._server.server_close()
        self._validator.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        _log.info("gateway_stopped", directory=self.directory_url)

    def __enter__(self) -> "Gateway":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _make_tls_context(vault: Vault) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(vault.gateway_pem)
    return context


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    authority: LabAuthority

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self._tls_context = context
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        connection, address = self.socket.accept()
        tls_connection = self._tls_context.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        )
        return tls_connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes and dropped connections are routine for a test CA.
        _log.debug("connection_failed", client=str(client_address), exc_info=True)


class _GatewayServer6(_GatewayServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT
    server: _GatewayServer

    def setup(self) -> None:
        super().setup()
        self.request.do_handshake()

    @property
    def _path(self) -> str:
        return urlsplit(self.path).path

    def do_GET(self) -> None:
        authority = self.server.authority
        path = self._path
        if path == "/directory":
            self._send(authority.directory())
        elif path == "/new-nonce":
            # RFC 8555 section 7.2: GET returns 204, HEAD returns 200.
            self._send(Reply(204, headers={"Cache-Control": "no-store"}))
        elif path == "/lab/stats":
            self._send(json_reply(200, authority.stats()))
        else:
            self._send_not_allowed_or_missing(path)

    def do_HEAD(self) -> None:
        if self._path == "/new-nonce":
            self._send(Reply(200, headers={"Cache-Control": "no-store"}))
        else:
            self._send_not_allowed_or_missing(self._path)

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except AcmeProblem as problem:
            # The rest of the request is unknown, so the connection cannot be reused.
            self.close_connection = True
            self._send(problem_reply(problem))
            return

        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        # RFC 8555 section 6.2: other media types are rejected with 415.
        if content_type != JOSE_TYPE:
            unsupported = AcmeProblem(
                "malformed", f"Content-Type must be {JOSE_TYPE}", 415
            )
            self._send(problem_reply(unsupported))
            return
        self._send(self.server.authority.handle_post(self._path, body))

    def _read_body(self) -> bytes:
        # HAProxy 3.2's HTTP client sends its JWS bodies chunked, without
        # Content-Length.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit():
            raise AcmeProblem(
                "malformed",
                "Content-Length or chunked Transfer-Encoding is required",
                411,
            )
        if int(length_text) > MAX_BODY:
            raise AcmeProblem("malformed", f"body exceeds {MAX_BODY} bytes", 413)
        return self.rfile.read(int(length_text))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = self.rfile.readline(MAX_LINE).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise AcmeProblem("malformed", "invalid chunk size line") from exc
            if size < 0:
                raise AcmeProblem("malformed", "invalid chunk size line")
            if size == 0:
                break
            if len(body) + size > MAX_BODY:
                raise AcmeProblem("malformed", f"body exceeds {MAX_BODY} bytes", 413)
            body += self.rfile.read(size)
            self.rfile.readline(MAX_LINE)

        # Skip the trailer section, which ends with an empty line.
        while self.rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass
        return bytes(body)

    def _send_not_allowed_or_missing(self, path: str) -> None:
        if path in ("/new-account", "/new-order") or path.startswith("/acme/"):
            reply = problem_reply(AcmeProblem("malformed", "use POST", 405))
            reply.headers["Allow"] = "POST"
        elif path in _GET_PATHS:
            reply = problem_reply(AcmeProblem("malformed", "method not allowed", 405))
            reply.headers["Allow"] = "GET"
        else:
            reply = problem_reply(
                AcmeProblem("malformed", f"no resource at {path}", 404)
            )
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        authority = self.server.authority
        self.send_response(reply.status)
        self.send_header("Replay-Nonce", authority.nonces.issue())
        if reply.body or reply.content_type == PROBLEM_TYPE:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self._path != "/directory":
            self.send_header("Link", f'<{authority.urls.directory}>;rel="index"')
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if hasattr(code, "value") else code
        _log.debug("request", method=self.command, path=self.path, status=status)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("http_server_message", message=format % args)
