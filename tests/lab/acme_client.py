"""A small ACME client and helpers for the lab gateway tests.

The client is written here on top of ``cryptography`` and ``http.client`` so
the tests check the gateway against an independent reading of RFC 8555, not
against the gateway's own JWS code.
"""

import base64
import hashlib
import http.client
import json
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

LAB_DOMAIN = "lab.local"

AccountKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64url(data: bytes) -> str:
    """Encode ``data`` as unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_sha256(key: Any) -> str:
    """Return the hex SHA-256 of a public key's DER SubjectPublicKeyInfo."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def make_csr(key: ec.EllipticCurvePrivateKey, names: list[str]) -> bytes:
    """Return a DER CSR for ``names`` signed by ``key``."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]),
            critical=False,
        )
    )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


@dataclass
class Response:
    """One HTTP response received by the test client."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON."""
        return json.loads(self.body)


@dataclass
class ChallengeServer:
    """Loopback HTTP server that serves key authorizations from ``answers``."""

    server: ThreadingHTTPServer
    answers: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.server.server_address[1])


class AcmeTestClient:
    """Minimal ACME client that signs flattened JWS with ES256/384/512 or RS256."""

    def __init__(self, directory_url: str, ca_file: Path, key: AccountKey) -> None:
        self.directory_url = directory_url
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.key = key
        self.kid: str | None = None
        self.nonce: str | None = None
        self.directory: dict[str, str] = self.get(directory_url).json()

    # Transport

    def request(
        self,
        method: str,
        url: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> Response:
        """Send one request over a fresh TLS connection."""
        parts = urlsplit(url)
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, context=self.context, timeout=10
        )
        try:
            connection.request(
                method,
                parts.path,
                body=body,
                headers=headers or {},
                encode_chunked=chunked,
            )
            response = connection.getresponse()
            result = Response(response.status, response.headers, response.read())
        finally:
            connection.close()
        if result.headers.get("Replay-Nonce"):
            self.nonce = result.headers["Replay-Nonce"]
        return result

    def get(self, url: str) -> Response:
        """Send a plain GET."""
        return self.request("GET", url)

    def fresh_nonce(self) -> str:
        """Fetch a nonce from newNonce."""
        return self.request("HEAD", self.directory["newNonce"]).headers["Replay-Nonce"]

    # JWS

    @property
    def jwk(self) -> dict[str, str]:
        """The public JWK of the account key, with full-size EC coordinates."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            numbers = self.key.public_key().public_numbers()
            size = (numbers.n.bit_length() + 7) // 8
            return {
                "kty": "RSA",
                "e": b64url(numbers.e.to_bytes(3, "big").lstrip(b"\0")),
                "n": b64url(numbers.n.to_bytes(size, "big")),
            }
        point = self.key.public_key().public_numbers()
        curve, size = {256: ("P-256", 32), 384: ("P-384", 48), 521: ("P-521", 66)}[
            self.key.curve.key_size
        ]
        return {
            "kty": "EC",
            "crv": curve,
            "x": b64url(point.x.to_bytes(size, "big")),
            "y": b64url(point.y.to_bytes(size, "big")),
        }

    @property
    def thumbprint(self) -> str:
        """RFC 7638 thumbprint of the account key."""
        canonical = json.dumps(self.jwk, sort_keys=True, separators=(",", ":"))
        return b64url(hashlib.sha256(canonical.encode()).digest())

    @property
    def algorithm(self) -> str:
        """The JWS alg that matches the account key."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return "RS256"
        return {256: "ES256", 384: "ES384", 521: "ES512"}[self.key.curve.key_size]

    def sign(
        self,
        url: str,
        payload: object | None,
        nonce: str | None = None,
        use_jwk: bool = False,
        signed_url: str | None = None,
    ) -> bytes:
        """Return a flattened JWS. A ``payload`` of None means POST-as-GET."""
        protected: dict[str, Any] = {
            "alg": self.algorithm,
            "nonce": nonce or self.nonce or self.fresh_nonce(),
            "url": signed_url or url,
        }
        if use_jwk or self.kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = self.kid
        protected_b64 = b64url(json.dumps(protected).encode())
        payload_b64 = "" if payload is None else b64url(json.dumps(payload).encode())
        signing_input = f"{protected_b64}.{payload_b64}".encode()
        return json.dumps(
            {
                "protected": protected_b64,
                "payload": payload_b64,
                "signature": b64url(self._signature(signing_input)),
            }
        ).encode()

    def _signature(self, signing_input: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}
        size = (self.key.curve.key_size + 7) // 8
        der = self.key.sign(signing_input, ec.ECDSA(digest[self.key.curve.key_size]))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def post(self, url: str, payload: object | None, **sign_options: Any) -> Response:
        """Sign ``payload`` for ``url`` and POST it."""
        body = self.sign(url, payload, **sign_options)
        headers = {"Content-Type": "application/jose+json"}
        return self.request("POST", url, body, headers)

    # ACME flows

    def register(self) -> Response:
        """Create (or find) the account and remember its kid."""
        payload = {"termsOfServiceAgreed": True, "contact": ["mailto:admin@lab.local"]}
        response = self.post(self.directory["newAccount"], payload, use_jwk=True)
        self.kid = response.headers["Location"]
        return response

    def new_order(self, domains: list[str]) -> Response:
        """Create an order for ``domains``."""
        identifiers = [{"type": "dns", "value": name} for name in domains]
        return self.post(self.directory["newOrder"], {"identifiers": identifiers})

    def poll(self, url: str, until: set[str], timeout: float = 10.0) -> dict[str, Any]:
        """POST-as-GET ``url`` until its status is in ``until``, then return it."""
        deadline = time.monotonic() + timeout
        while True:
            document: dict[str, Any] = self.post(url, None).json()
            if document["status"] in until or time.monotonic() > deadline:
                return document
            time.sleep(0.1)

    def authorize(self, order: dict[str, Any], challenges: ChallengeServer) -> None:
        """Publish every key authorization and trigger the challenges."""
        for authz_url in order["authorizations"]:
            authorization = self.post(authz_url, None).json()
            challenge = authorization["challenges"][0]
            token = challenge["token"]
            challenges.answers[token] = f"{token}.{self.thumbprint}"
            self.post(challenge["url"], {})
