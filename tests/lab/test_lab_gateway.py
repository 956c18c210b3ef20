"""Tests of the lab gateway's ACME protocol, driven by an in-test client."""

import json
from typing import Any

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from haproxy_acme_supervisor.lab.gateway import Gateway
from haproxy_acme_supervisor.lab.vault import Vault

from .acme_client import (
    LAB_DOMAIN,
    AcmeTestClient,
    ChallengeServer,
    b64url,
    make_csr,
    public_sha256,
)

BAD_NONCE = "urn:ietf:params:acme:error:badNonce"


def ready_order(
    client: AcmeTestClient, challenges: ChallengeServer, domains: list[str]
) -> tuple[str, dict[str, Any]]:
    """Register, order ``domains``, pass http-01 and return the ready order."""
    client.register()
    response = client.new_order(domains)
    order_url = response.headers["Location"]
    client.authorize(response.json(), challenges)
    return order_url, client.poll(order_url, {"ready", "invalid"})


def finalize(
    client: AcmeTestClient, order: dict[str, Any], key: ec.EllipticCurvePrivateKey
) -> Any:
    """Send a finalize with a CSR for the order's names signed by ``key``."""
    names = [identifier["value"] for identifier in order["identifiers"]]
    return client.post(order["finalize"], {"csr": b64url(make_csr(key, names))})


def vault_leaf(vault: Vault) -> x509.Certificate:
    """Load the vault leaf."""
    return x509.load_pem_x509_certificates(vault.vault_cert.read_bytes())[0]


class TestDirectoryAndNonces:
    def test_directory_lists_resources(self, client: AcmeTestClient) -> None:
        """The directory names newNonce, newAccount and newOrder."""
        directory = client.directory
        assert directory["newNonce"].endswith("/new-nonce")
        assert directory["newAccount"].endswith("/new-account")
        assert directory["newOrder"].endswith("/new-order")

    def test_directory_sends_nonce(self, client: AcmeTestClient) -> None:
        """Even the directory response carries a Replay-Nonce."""
        response = client.get(client.directory_url)
        assert response.headers["Replay-Nonce"]

    def test_head_new_nonce(self, client: AcmeTestClient) -> None:
        """HEAD newNonce returns 200, a nonce and Cache-Control: no-store."""
        response = client.request("HEAD", client.directory["newNonce"])
        assert response.status == 200
        assert response.headers["Replay-Nonce"]
        assert response.headers["Cache-Control"] == "no-store"

    def test_get_new_nonce(self, client: AcmeTestClient) -> None:
        """GET newNonce returns 204 with a nonce."""
        response = client.get(client.directory["newNonce"])
        assert response.status == 204
        assert response.headers["Replay-Nonce"]

    def test_nonces_are_unique(self, client: AcmeTestClient) -> None:
        """Two newNonce calls return two different nonces."""
        assert client.fresh_nonce() != client.fresh_nonce()

    def test_reused_nonce_rejected(self, client: AcmeTestClient) -> None:
        """A nonce used once is rejected as badNonce with a new nonce."""
        nonce = client.fresh_nonce()
        url = client.directory["newAccount"]
        first = client.post(url, {}, nonce=nonce, use_jwk=True)
        second = client.post(url, {}, nonce=nonce, use_jwk=True)
        assert first.status == 201
        assert second.status == 400
        assert second.json()["type"] == BAD_NONCE
        assert second.headers["Content-Type"] == "application/problem+json"
        assert second.headers["Replay-Nonce"] not in ("", nonce)

    def test_unknown_nonce_rejected(self, client: AcmeTestClient) -> None:
        """A nonce the server never issued is rejected as badNonce."""
        response = client.post(
            client.directory["newAccount"], {}, nonce="bm90LWlzc3VlZA", use_jwk=True
        )
        assert response.status == 400
        assert response.json()["type"] == BAD_NONCE
        assert response.headers["Replay-Nonce"]

    def test_new_nonce_after_bad_nonce_works(self, client: AcmeTestClient) -> None:
        """The nonce returned with badNonce is accepted by the retry."""
        client.post(client.directory["newAccount"], {}, nonce="x", use_jwk=True)
        retry = client.post(
            client.directory["newAccount"], {"termsOfServiceAgreed": True}
        )
        assert retry.status == 201


class TestJws:
    def test_url_mismatch_rejected(self, client: AcmeTestClient) -> None:
        """A JWS whose url is not the request URL is unauthorized."""
        response = client.post(
            client.directory["newAccount"],
            {},
            use_jwk=True,
            signed_url=client.directory["newOrder"],
        )
        assert response.status == 403
        assert response.json()["type"].endswith(":unauthorized")

    def test_bad_signature_rejected(self, client: AcmeTestClient) -> None:
        """A JWS with a tampered payload is malformed."""
        body = json.loads(client.sign(client.directory["newAccount"], {}, use_jwk=True))
        body["payload"] = b64url(b'{"contact":["mailto:evil@lab.local"]}')
        response = client.request(
            "POST",
            client.directory["newAccount"],
            json.dumps(body).encode(),
            {"Content-Type": "application/jose+json"},
        )
        assert response.status == 400
        assert response.json()["type"].endswith(":malformed")

    def test_wrong_content_type_rejected(self, client: AcmeTestClient) -> None:
        """A POST that is not application/jose+json gets 415."""
        body = client.sign(client.directory["newAccount"], {}, use_jwk=True)
        response = client.request(
            "POST",
            client.directory["newAccount"],
            body,
            {"Content-Type": "application/json"},
        )
        assert response.status == 415

    def test_chunked_body_accepted(self, client: AcmeTestClient) -> None:
        """A chunked JWS body, as HAProxy sends it, is read in full."""
        body = client.sign(
            client.directory["newAccount"], {"termsOfServiceAgreed": True}
        )
        response = client.request(
            "POST",
            client.directory["newAccount"],
            iter([body[:10], body[10:]]),
            {"Content-Type": "application/jose+json", "Transfer-Encoding": "chunked"},
            chunked=True,
        )
        assert response.status == 201

    def test_short_jwk_coordinate_rejected(self, client: AcmeTestClient) -> None:
        """A JWK whose x lacks its leading zero byte is rejected."""
        jwk = client.jwk
        short_x = b64url(b"\x01" * 47)
        body = json.loads(client.sign(client.directory["newAccount"], {}, use_jwk=True))
        protected = json.loads(
            __import__("base64").urlsafe_b64decode(body["protected"] + "==")
        )
        protected["jwk"] = {**jwk, "x": short_x}
        body["protected"] = b64url(json.dumps(protected).encode())
        response = client.request(
            "POST",
            client.directory["newAccount"],
            json.dumps(body).encode(),
            {"Content-Type": "application/jose+json"},
        )
        assert response.status == 400
        assert "47 bytes" in response.json()["detail"]

    def test_get_on_post_resource_rejected(self, client: AcmeTestClient) -> None:
        """A plain GET on newOrder returns 405."""
        response = client.get(client.directory["newOrder"])
        assert response.status == 405

    @pytest.mark.parametrize(
        "key",
        [
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP521R1()),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ],
        ids=["ES256", "ES512", "RS256"],
    )
    def test_account_algorithms(
        self, gateway: Gateway, vault: Vault, key: ec.EllipticCurvePrivateKey
    ) -> None:
        """ES256, ES512 and RS256 accounts can register and order."""
        client = AcmeTestClient(gateway.directory_url, vault.ca_cert, key)
        assert client.register().status == 201
        assert client.new_order([LAB_DOMAIN]).status == 201


class TestAccounts:
    def test_new_account_created(self, client: AcmeTestClient) -> None:
        """A new key creates an account: 201, Location and status valid."""
        response = client.register()
        assert response.status == 201
        assert "/acme/account/" in response.headers["Location"]
        assert response.json()["status"] == "valid"

    def test_existing_account_returned(self, client: AcmeTestClient) -> None:
        """The same key again returns 200 and the same Location."""
        first = client.register()
        second = client.register()
        assert second.status == 200
        assert second.headers["Location"] == first.headers["Location"]

    def test_only_return_existing_unknown(self, client: AcmeTestClient) -> None:
        """onlyReturnExisting for an unknown key is accountDoesNotExist."""
        response = client.post(
            client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True
        )
        assert response.status == 400
        assert response.json()["type"].endswith(":accountDoesNotExist")

    def test_only_return_existing_known(self, client: AcmeTestClient) -> None:
        """onlyReturnExisting for a known key returns the account."""
        created = client.register()
        response = client.post(
            client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True
        )
        assert response.status == 200
        assert response.headers["Location"] == created.headers["Location"]

    def test_account_lookup_by_kid(self, client: AcmeTestClient) -> None:
        """POST-as-GET on the kid URL returns the account."""
        client.register()
        assert client.kid is not None
        response = client.post(client.kid, None)
        assert response.status == 200
        assert response.json()["contact"] == ["mailto:admin@lab.local"]

    def test_unknown_kid_rejected(self, client: AcmeTestClient) -> None:
        """A kid the server never issued is accountDoesNotExist."""
        client.kid = client.directory["newOrder"].replace(
            "/new-order", "/acme/account/nobody"
        )
        response = client.new_order([LAB_DOMAIN])
        assert response.status == 400
        assert response.json()["type"].endswith(":accountDoesNotExist")

    def test_jwk_on_new_order_rejected(self, client: AcmeTestClient) -> None:
        """newOrder signed with jwk instead of kid is malformed."""
        client.register()
        identifiers = [{"type": "dns", "value": LAB_DOMAIN}]
        response = client.post(
            client.directory["newOrder"], {"identifiers": identifiers}, use_jwk=True
        )
        assert response.status == 400
        assert response.json()["type"].endswith(":malformed")


class TestOrders:
    def test_new_order_object(self, client: AcmeTestClient) -> None:
        """A new order is pending with one authorization and a finalize URL."""
        client.register()
        response = client.new_order([LAB_DOMAIN])
        order = response.json()
        assert response.status == 201
        assert "/acme/order/" in response.headers["Location"]
        assert order["status"] == "pending"
        assert order["identifiers"] == [{"type": "dns", "value": LAB_DOMAIN}]
        assert len(order["authorizations"]) == 1
        assert order["finalize"].endswith("/finalize")
        assert order["expires"].endswith("Z")

    def test_authorization_offers_http01(self, client: AcmeTestClient) -> None:
        """The authorization offers one pending http-01 challenge."""
        client.register()
        order = client.new_order([LAB_DOMAIN]).json()
        authorization = client.post(order["authorizations"][0], None).json()
        challenge = authorization["challenges"][0]
        assert authorization["identifier"] == {"type": "dns", "value": LAB_DOMAIN}
        assert challenge["type"] == "http-01"
        assert challenge["status"] == "pending"
        assert len(challenge["token"]) >= 43

    def test_name_outside_vault_rejected(self, client: AcmeTestClient) -> None:
        """An order for a name the vault has no certificate for is rejected."""
        client.register()
        response = client.new_order(["other.local"])
        assert response.status == 400
        assert response.json()["type"].endswith(":rejectedIdentifier")

    def test_ip_identifier_rejected(self, client: AcmeTestClient) -> None:
        """An identifier that is not of type dns is unsupportedIdentifier."""
        client.register()
        payload = {"identifiers": [{"type": "ip", "value": "127.0.0.1"}]}
        response = client.post(client.directory["newOrder"], payload)
        assert response.status == 400
        assert response.json()["type"].endswith(":unsupportedIdentifier")

    def test_other_account_order_hidden(
        self, client: AcmeTestClient, gateway: Gateway, vault: Vault
    ) -> None:
        """An account cannot read another account's order."""
        client.register()
        order_url = client.new_order([LAB_DOMAIN]).headers["Location"]
        other = AcmeTestClient(
            gateway.directory_url,
            vault.ca_cert,
            ec.generate_private_key(ec.SECP384R1()),
        )
        other.register()
        response = other.post(order_url, None)
        assert response.status == 403


class TestValidation:
    def test_challenge_validates_order(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """A correct http-01 answer makes the authorization valid, the order ready."""
        _, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        authorization = client.post(order["authorizations"][0], None).json()
        assert order["status"] == "ready"
        assert authorization["status"] == "valid"
        assert authorization["challenges"][0]["status"] == "valid"
        assert "validated" in authorization["challenges"][0]

    def test_challenge_sends_domain_host(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """The validation request carries the domain in its Host header."""
        ready_order(client, challenge_server, [LAB_DOMAIN])
        assert LAB_DOMAIN in challenge_server.hosts

    def test_challenge_response_links_authorization(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """The challenge POST response links up to its authorization."""
        client.register()
        order = client.new_order([LAB_DOMAIN]).json()
        authz_url = order["authorizations"][0]
        challenge = client.post(authz_url, None).json()["challenges"][0]
        response = client.post(challenge["url"], {})
        assert response.status == 200
        assert f"<{authz_url}>" in response.headers.get_all("Link", [])[-1]

    def test_wrong_answer_invalidates_order(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """A wrong http-01 answer makes the challenge and the order invalid."""
        client.register()
        response = client.new_order([LAB_DOMAIN])
        order_url = response.headers["Location"]
        authz_url = response.json()["authorizations"][0]
        challenge = client.post(authz_url, None).json()["challenges"][0]
        challenge_server.answers[challenge["token"]] = "wrong"
        client.post(challenge["url"], {})
        order = client.poll(order_url, {"ready", "invalid"})
        authorization = client.post(authz_url, None).json()
        assert order["status"] == "invalid"
        assert authorization["status"] == "invalid"
        assert authorization["challenges"][0]["error"]["type"].endswith(
            ":incorrectResponse"
        )

    def test_late_answer_retried(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """An answer published after the challenge POST is found by a retry."""
        client.register()
        response = client.new_order([LAB_DOMAIN])
        order_url = response.headers["Location"]
        authz_url = response.json()["authorizations"][0]
        challenge = client.post(authz_url, None).json()["challenges"][0]
        client.post(challenge["url"], {})
        token = challenge["token"]
        challenge_server.answers[token] = f"{token}.{client.thumbprint}\n"
        order = client.poll(order_url, {"ready", "invalid"})
        assert order["status"] == "ready"


class TestFinalize:
    def test_finalize_before_ready_rejected(self, client: AcmeTestClient) -> None:
        """Finalize on a pending order is orderNotReady."""
        client.register()
        order = client.new_order([LAB_DOMAIN]).json()
        response = finalize(client, order, ec.generate_private_key(ec.SECP256R1()))
        assert response.status == 403
        assert response.json()["type"].endswith(":orderNotReady")

    def test_wrong_name_csr_rejected(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """A CSR for other names than the order's is badCSR."""
        _, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        csr = make_csr(ec.generate_private_key(ec.SECP256R1()), ["other.local"])
        response = client.post(order["finalize"], {"csr": b64url(csr)})
        assert response.status == 400
        assert response.json()["type"].endswith(":badCSR")

    def test_garbage_csr_rejected(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """A csr value that is not DER is badCSR."""
        _, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        response = client.post(order["finalize"], {"csr": b64url(b"not a csr")})
        assert response.status == 400
        assert response.json()["type"].endswith(":badCSR")

    def test_finalize_logs_csr_hash(
        self, client: AcmeTestClient, challenge_server: ChallengeServer
    ) -> None:
        """Finalize logs the SHA-256 of the CSR's public key and its names."""
        _, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        key = ec.generate_private_key(ec.SECP256R1())
        with structlog.testing.capture_logs() as events:
            response = finalize(client, order, key)
        logged = [event for event in events if event["event"] == "finalize_csr"]
        assert response.status == 200
        assert response.json()["status"] == "valid"
        assert len(logged) == 1
        assert logged[0]["finalize_csr_public_sha256"] == public_sha256(
            key.public_key()
        )
        assert logged[0]["names"] == LAB_DOMAIN


class TestCertificate:
    def test_other_key_gets_vault_certificate(
        self, client: AcmeTestClient, challenge_server: ChallengeServer, vault: Vault
    ) -> None:
        """A CSR with another key still receives the vault's leaf and the CA."""
        order_url, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        finalize(client, order, ec.generate_private_key(ec.SECP256R1()))
        certificate_url = client.post(order_url, None).json()["certificate"]
        response = client.post(certificate_url, None)
        chain = x509.load_pem_x509_certificates(response.body)
        ca = x509.load_pem_x509_certificate(vault.ca_cert.read_bytes())
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/pem-certificate-chain"
        assert len(chain) == 2
        assert chain[0].fingerprint(hashes.SHA256()) == vault_leaf(vault).fingerprint(
            hashes.SHA256()
        )
        assert chain[1] == ca

    def test_other_key_logs_warning(
        self, client: AcmeTestClient, challenge_server: ChallengeServer, vault: Vault
    ) -> None:
        """Serving the vault leaf for another key logs both key hashes."""
        order_url, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        key = ec.generate_private_key(ec.SECP256R1())
        finalize(client, order, key)
        certificate_url = client.post(order_url, None).json()["certificate"]
        with structlog.testing.capture_logs() as events:
            client.post(certificate_url, None)
        warnings = [e for e in events if e["event"] == "csr_key_differs_from_vault_key"]
        vault_key = serialization.load_pem_private_key(
            vault.vault_key.read_bytes(), None
        )
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["csr_public_sha256"] == public_sha256(key.public_key())
        assert warnings[0]["vault_public_sha256"] == public_sha256(
            vault_key.public_key()
        )

    def test_vault_key_served_quietly(
        self, client: AcmeTestClient, challenge_server: ChallengeServer, vault: Vault
    ) -> None:
        """A CSR with the vault key gets the leaf without the mismatch warning."""
        order_url, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        vault_key = serialization.load_pem_private_key(
            vault.vault_key.read_bytes(), None
        )
        assert isinstance(vault_key, ec.EllipticCurvePrivateKey)
        finalize(client, order, vault_key)
        certificate_url = client.post(order_url, None).json()["certificate"]
        with structlog.testing.capture_logs() as events:
            response = client.post(certificate_url, None)
        names = [event["event"] for event in events]
        assert response.status == 200
        assert "certificate_served" in names
        assert "csr_key_differs_from_vault_key" not in names


class TestStats:
    def test_stats_count_flow(
        self,
        client: AcmeTestClient,
        challenge_server: ChallengeServer,
        gateway: Gateway,
    ) -> None:
        """Stats count accounts, orders, finalizations and downloads."""
        order_url, order = ready_order(client, challenge_server, [LAB_DOMAIN])
        client.new_order([LAB_DOMAIN])
        finalize(client, order, ec.generate_private_key(ec.SECP256R1()))
        certificate_url = client.post(order_url, None).json()["certificate"]
        client.post(certificate_url, None)
        stats = client.get(gateway.directory_url.replace("/directory", "/lab/stats"))
        assert stats.status == 200
        assert stats.json() == {
            "accounts": 1,
            "orders": 2,
            "finalized": 1,
            "certificates": 1,
        }
