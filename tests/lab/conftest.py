"""Fixtures for the lab tests: a vault, an http-01 responder and a gateway."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from haproxy_acme_supervisor.lab.gateway import Gateway
from haproxy_acme_supervisor.lab.vault import Vault, provision

from .acme_client import LAB_DOMAIN, AcmeTestClient, ChallengeServer


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Vault:
    """A vault for lab.local, shared by the whole session."""
    return provision(tmp_path_factory.mktemp("vault"), [LAB_DOMAIN])


@pytest.fixture
def challenge_server() -> Iterator[ChallengeServer]:
    """A loopback http-01 responder on an ephemeral port."""
    state: ChallengeServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hosts.append(self.headers.get("Host", ""))
            token = self.path.rsplit("/", 1)[-1]
            answer = state.answers.get(token)
            body = (answer or "not found").encode()
            self.send_response(200 if answer else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = ChallengeServer(server)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def gateway(vault: Vault, challenge_server: ChallengeServer) -> Iterator[Gateway]:
    """A running gateway whose http-01 checks go to ``challenge_server``."""
    with Gateway(
        vault,
        http01_port=challenge_server.port,
        http01_attempts=3,
        http01_retry_delay=0.1,
    ) as running:
        yield running


@pytest.fixture
def client(gateway: Gateway, vault: Vault) -> AcmeTestClient:
    """A client with a fresh ES384 key, not yet registered."""
    key = ec.generate_private_key(ec.SECP384R1())
    return AcmeTestClient(gateway.directory_url, vault.ca_cert, key)
