"""ACME protocol logic of the lab gateway, independent of HTTP and sockets.

The authority authenticates JWS requests, keeps accounts, orders and
authorizations in memory, and completes finalize with the vault's stored
certificate instead of one issued from the CSR. All resources are guarded by
one lock: requests are few and short, and one lock makes every order, authz
and challenge transition atomic with respect to the others.
"""

import json
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from haproxy_acme_supervisor.lab import jws
from haproxy_acme_supervisor.lab.errors import AcmeProblem
from haproxy_acme_supervisor.lab.http01 import Http01Validator, ValidationResult
from haproxy_acme_supervisor.lab.resources import (
    Account,
    Authorization,
    Challenge,
    Order,
    UrlLayout,
    new_id,
    timestamp,
)
from haproxy_acme_supervisor.lab.vault import (
    Vault,
    is_dns_name,
    leaf_dns_names,
)
from haproxy_acme_supervisor.pem import public_key_sha256

_log = structlog.get_logger()

JSON_TYPE = "application/json"
PROBLEM_TYPE = "application/problem+json"
PEM_CHAIN_TYPE = "application/pem-certificate-chain"
# Seconds a client should wait before polling a pending resource again.
RETRY_AFTER = "1"
# Issued nonces kept before the oldest are forgotten, which bounds memory.
MAX_NONCES = 10_000

_ROUTE = re.compile(r"^/acme/(account|order|authz|chall|cert)/([A-Za-z0-9_-]+)(/\w+)?$")


@dataclass(frozen=True)
class Reply:
    """An HTTP response produced by the authority."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(
    status: int, document: object, headers: dict[str, str] | None = None
) -> Reply:
    """Build a JSON reply with optional extra headers."""
    return Reply(status, json.dumps(document).encode(), JSON_TYPE, headers or {})


def problem_reply(problem: AcmeProblem) -> Reply:
    """Build the ``application/problem+json`` reply for ``problem``."""
    return Reply(problem.status, problem.to_json(), PROBLEM_TYPE)


@dataclass(frozen=True)
class SignedRequest:
    """A POST whose JWS, nonce and URL were verified."""

    payload: bytes
    account: Account | None
    jwk: dict[str, Any] | None

    @property
    def is_post_as_get(self) -> bool:
        """Whether the payload is empty (RFC 8555 section 6.3)."""
        return self.payload == b""

    def payload_object(self) -> dict[str, Any]:
        """Decode the payload as a JSON object, or raise a ``malformed`` problem."""
        try:
            document = json.loads(self.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AcmeProblem("malformed", f"payload is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise AcmeProblem("malformed", "payload is not a JSON object")
        return document

    def require_account(self) -> Account:
        """Return the account of a ``kid`` request."""
        if self.account is None:
            raise AcmeProblem("malformed", "this resource requires kid, not jwk")
        return self.account


class NonceStore:
    """Issued, not yet used nonces (RFC 8555 section 6.5)."""

    def __init__(self, capacity: int = MAX_NONCES) -> None:
        self._capacity = capacity
        self._nonces: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> str:
        """Return a fresh nonce and remember it."""
        nonce = secrets.token_urlsafe(16)
        with self._lock:
            self._nonces[nonce] = None
            while len(self._nonces) > self._capacity:
                self._nonces.popitem(last=False)
        return nonce

    def consume(self, nonce: str) -> bool:
        """Remove ``nonce`` and return whether it was issued and unused."""
        with self._lock:
            return self._nonces.pop(nonce, False) is None


class LabAuthority:
    """Accounts, orders and authorizations of the lab CA, served from a vault."""

    def __init__(self, vault: Vault, base_url: str, validator: Http01Validator):
        self.vault = vault
        self.urls = UrlLayout(base_url)
        self.nonces = NonceStore()
        self._validator = validator
        self._lock = threading.Lock()

        self._chain = vault.vault_cert.read_bytes()
        self._leaf = vault.read_leaf()
        self._vault_names = set(leaf_dns_names(self._leaf))
        self._vault_public_sha256 = public_key_sha256(vault.read_public_key())

        self._accounts: dict[str, Account] = {}
        self._accounts_by_thumbprint: dict[str, Account] = {}
        self._orders: dict[str, Order] = {}
        self._authorizations: dict[str, Authorization] = {}
        self._challenges: dict[str, Authorization] = {}
        self._finalized = 0
        self._certificates = 0

    # Unauthenticated resources

    def directory(self) -> Reply:
        """Return the directory object (RFC 8555 section 7.1.1)."""
        document = {
            "newNonce": self.urls.new_nonce,
            "newAccount": self.urls.new_account,
            "newOrder": self.urls.new_order,
        }
        return json_reply(200, document)

    def stats(self) -> dict[str, int]:
        """Return how many accounts, orders, finalizations and downloads occurred."""
        with self._lock:
            return {
                "accounts": len(self._accounts),
                "orders": len(self._orders),
                "finalized": self._finalized,
                "certificates": self._certificates,
            }

    # Authenticated resources

    def handle_post(self, path: str, body: bytes) -> Reply:
        """Verify a JWS POST to ``path`` and run the resource it targets."""
        try:
            request = self._authenticate(path, body)
            with self._lock:
                return self._dispatch(path, request)
        except AcmeProblem as problem:
            _log.info(
                "request_rejected", path=path, error=problem.kind, detail=problem.detail
            )
            return problem_reply(problem)

    def _authenticate(self, path: str, body: bytes) -> SignedRequest:
        signed = jws.parse_jws(body)
        protected = signed.protected

        # RFC 8555 section 6.4: the signed "url" must be the request URL.
        if protected["url"] != self.urls.base + path:
            raise AcmeProblem(
                "unauthorized",
                f"JWS url {protected['url']} is not the request URL",
                403,
            )
        if not self.nonces.consume(protected["nonce"]):
            raise AcmeProblem("badNonce", "nonce is unknown or was already used")

        if "jwk" in protected:
            if path != "/new-account":
                raise AcmeProblem("malformed", "jwk is only allowed on newAccount")
            key = jws.public_key_from_jwk(protected["jwk"])
            jws.verify_signature(signed, key)
            _log.debug("jws_verified", path=path, alg=signed.algorithm, signer="jwk")
            return SignedRequest(signed.payload, None, protected["jwk"])

        account = self._find_account(str(protected["kid"]))
        jws.verify_signature(signed, account.key)
        _log.debug("jws_verified", path=path, alg=signed.algorithm, account=account.id)
        return SignedRequest(signed.payload, account, None)

    def _find_account(self, kid: str) -> Account:
        prefix = self.urls.resource("account", "")
        with self._lock:
            account = self._accounts.get(kid.removeprefix(prefix))
        if not kid.startswith(prefix) or account is None:
            raise AcmeProblem("accountDoesNotExist", f"no account at {kid}")
        return account

    def _dispatch(self, path: str, request: SignedRequest) -> Reply:
        if path == "/new-account":
            return self._new_account(request)
        if path == "/new-order":
            return self._new_order(request)

        match = _ROUTE.match(path)
        if match is None:
            raise AcmeProblem("malformed", f"no resource at {path}", 404)
        kind, resource_id, suffix = match.groups()
        account = request.require_account()
        route = _RESOURCE_ROUTES.get((kind, suffix or ""))
        if route is None:
            raise AcmeProblem("malformed", f"no resource at {path}", 404)
        return route(self, account, resource_id, request)

    # Accounts, RFC 8555 section 7.3

    def _new_account(self, request: SignedRequest) -> Reply:
        if request.jwk is None:
            raise AcmeProblem("malformed", "newAccount must be signed with jwk")
        payload = request.payload_object()
        thumbprint = jws.jwk_thumbprint(request.jwk)

        existing = self._accounts_by_thumbprint.get(thumbprint)
        if existing is not None:
            location = self.urls.resource("account", existing.id)
            return json_reply(200, existing.render(self.urls), {"Location": location})
        if payload.get("onlyReturnExisting") is True:
            raise AcmeProblem("accountDoesNotExist", "no account for this key")

        contact = payload.get("contact", [])
        if not isinstance(contact, list) or not all(
            isinstance(item, str) for item in contact
        ):
            raise AcmeProblem("malformed", "contact must be a list of URLs")
        key = jws.public_key_from_jwk(request.jwk)
        account = Account(new_id(), thumbprint, key, contact)
        self._accounts[account.id] = account
        self._accounts_by_thumbprint[thumbprint] = account

        _log.info("account_created", account=account.id, thumbprint=thumbprint)
        location = self.urls.resource("account", account.id)
        return json_reply(201, account.render(self.urls), {"Location": location})

    def _account(
        self, account: Account, account_id: str, request: SignedRequest
    ) -> Reply:
        if account_id != account.id:
            raise AcmeProblem("unauthorized", "the account belongs to another key", 403)
        # The lab never needs account updates (contact, deactivation), so only
        # POST-as-GET and an empty update are accepted.
        if not request.is_post_as_get and request.payload_object():
            raise AcmeProblem("malformed", "account updates are not supported")
        return json_reply(200, account.render(self.urls))

    def _account_orders(
        self, account: Account, account_id: str, request: SignedRequest
    ) -> Reply:
        if account_id != account.id:
            raise AcmeProblem("unauthorized", "the account belongs to another key", 403)
        orders = [
            self.urls.resource("order", order_id) for order_id in account.order_ids
        ]
        return json_reply(200, {"orders": orders})

    # Orders, RFC 8555 section 7.4

    def _new_order(self, request: SignedRequest) -> Reply:
        account = request.require_account()
        payload = request.payload_object()
        if "notBefore" in payload or "notAfter" in payload:
            raise AcmeProblem(
                "malformed", "notBefore and notAfter are not supported by the vault"
            )
        domains = self._order_domains(payload.get("identifiers"))

        order = Order(new_id(), account.id, domains, [])
        for domain in domains:
            challenge = Challenge(new_id(), secrets.token_urlsafe(32))
            authorization = Authorization(
                new_id(), account.id, order.id, domain, challenge
            )
            self._authorizations[authorization.id] = authorization
            self._challenges[challenge.id] = authorization
            order.authorization_ids.append(authorization.id)
        self._orders[order.id] = order
        account.order_ids.append(order.id)

        _log.info(
            "order_created",
            order=order.id,
            account=account.id,
            domains=",".join(domains),
        )
        location = self.urls.resource("order", order.id)
        return json_reply(201, order.render(self.urls), {"Location": location})

    def _order_domains(self, identifiers: object) -> list[str]:
        if not isinstance(identifiers, list) or not identifiers:
            raise AcmeProblem("malformed", "identifiers must be a non-empty list")
        domains: list[str] = []
        for identifier in identifiers:
            if not isinstance(identifier, dict) or identifier.get("type") != "dns":
                raise AcmeProblem(
                    "unsupportedIdentifier", "only dns identifiers are supported"
                )
            name = str(identifier.get("value", "")).lower()
            if not is_dns_name(name):
                raise AcmeProblem("rejectedIdentifier", f"invalid DNS name {name!r}")
            if name not in self._vault_names:
                raise AcmeProblem(
                    "rejectedIdentifier",
                    f"the vault contains no certificate for {name}",
                )
            if name not in domains:
                domains.append(name)
        return domains

    def _order(self, account: Account, order_id: str, request: SignedRequest) -> Reply:
        order = self._owned_order(account, order_id)
        headers = {"Retry-After": RETRY_AFTER} if order.status == "processing" else {}
        return json_reply(200, order.render(self.urls), headers)

    def _owned_order(self, account: Account, order_id: str) -> Order:
        order = self._orders.get(order_id)
        if order is None:
            raise AcmeProblem("malformed", f"no order {order_id}", 404)
        if order.account_id != account.id:
            raise AcmeProblem(
                "unauthorized", "the order belongs to another account", 403
            )
        return order

    # Authorizations and challenges, RFC 8555 sections 7.5 and 7.5.1

    def _authorization(
        self, account: Account, authz_id: str, request: SignedRequest
    ) -> Reply:
        authorization = self._owned_authorization(
            account, self._authorizations.get(authz_id)
        )
        headers = (
            {"Retry-After": RETRY_AFTER} if authorization.status == "pending" else {}
        )
        return json_reply(200, authorization.render(self.urls), headers)

    def _challenge(
        self, account: Account, challenge_id: str, request: SignedRequest
    ) -> Reply:
        authorization = self._owned_authorization(
            account, self._challenges.get(challenge_id)
        )
        challenge = authorization.challenge
        # An empty JSON object starts validation, while POST-as-GET only reads.
        if not request.is_post_as_get and challenge.status == "pending":
            request.payload_object()
            self._start_validation(account, authorization)

        up = self.urls.resource("authz", authorization.id)
        link = {"Link": f'<{up}>;rel="up"'}
        return json_reply(200, challenge.render(self.urls), link)

    def _owned_authorization(
        self, account: Account, authorization: Authorization | None
    ) -> Authorization:
        if authorization is None:
            raise AcmeProblem("malformed", "no such authorization or challenge", 404)
        if authorization.account_id != account.id:
            raise AcmeProblem(
                "unauthorized", "the authorization belongs to another account", 403
            )
        return authorization

    def _start_validation(self, account: Account, authorization: Authorization) -> None:
        challenge = authorization.challenge
        challenge.status = "processing"
        key_authorization = f"{challenge.token}.{account.thumbprint}"
        _log.info(
            "challenge_processing",
            authz=authorization.id,
            domain=authorization.domain,
            token=challenge.token,
        )

        def record(result: ValidationResult) -> None:
            self._record_validation(authorization.id, result)

        self._validator.submit(
            authorization.domain, challenge.token, key_authorization, record
        )

    def _record_validation(self, authz_id: str, result: ValidationResult) -> None:
        with self._lock:
            authorization = self._authorizations[authz_id]
            challenge = authorization.challenge
            if result.valid:
                challenge.status = authorization.status = "valid"
                challenge.validated = timestamp()
            else:
                challenge.status = authorization.status = "invalid"
                challenge.error = AcmeProblem(
                    result.error_kind, result.detail
                ).to_document()
            order = self._orders[authorization.order_id]
            self._refresh_order(order)

        if result.valid:
            _log.info("challenge_valid", authz=authz_id, domain=authorization.domain)
        else:
            _log.warning(
                "challenge_invalid",
                authz=authz_id,
                domain=authorization.domain,
                error=result.error_kind,
                detail=result.detail,
            )
        _log.info("order_status", order=order.id, status=order.status)

    def _refresh_order(self, order: Order) -> None:
        if order.status != "pending":
            return
        statuses = [self._authorizations[i].status for i in order.authorization_ids]
        if "invalid" in statuses:
            order.status = "invalid"
            order.error = AcmeProblem(
                "unauthorized", "an authorization of the order is invalid"
            ).to_document()
        elif all(status == "valid" for status in statuses):
            order.status = "ready"

    # Finalize and certificate, RFC 8555 sections 7.4 and 7.4.2

    def _finalize(
        self, account: Account, order_id: str, request: SignedRequest
    ) -> Reply:
        order = self._owned_order(account, order_id)
        if order.status != "ready":
            raise AcmeProblem(
                "orderNotReady", f"order is {order.status}, not ready", 403
            )
        csr = _decode_csr(request.payload_object().get("csr"))
        names = _csr_names(csr)
        if names != set(order.domains):
            raise AcmeProblem(
                "badCSR",
                f"CSR names {','.join(sorted(names)) or 'none'} differ from the order "
                f"identifiers {','.join(sorted(order.domains))}",
            )

        order.csr_public_sha256 = public_key_sha256(csr.public_key())
        _log.info(
            "finalize_csr",
            order=order.id,
            names=",".join(sorted(names)),
            finalize_csr_public_sha256=order.csr_public_sha256,
        )
        # The certificate is the vault's, so there is nothing to issue and the
        # order skips "processing".
        order.status = "valid"
        self._finalized += 1
        _log.info("order_status", order=order.id, status=order.status)

        location = self.urls.resource("order", order.id)
        return json_reply(200, order.render(self.urls), {"Location": location})

    def _certificate(
        self, account: Account, order_id: str, request: SignedRequest
    ) -> Reply:
        order = self._owned_order(account, order_id)
        if order.status != "valid":
            raise AcmeProblem("malformed", f"order {order_id} has no certificate", 404)
        self._certificates += 1

        fingerprint = self._leaf.fingerprint(hashes.SHA256()).hex()
        _log.info(
            "certificate_served",
            order=order.id,
            serial=format(self._leaf.serial_number, "x"),
            sha256=fingerprint,
        )
        if order.csr_public_sha256 != self._vault_public_sha256:
            _log.warning(
                "csr_key_differs_from_vault_key",
                order=order.id,
                csr_public_sha256=order.csr_public_sha256,
                vault_public_sha256=self._vault_public_sha256,
            )
        return Reply(200, self._chain, PEM_CHAIN_TYPE)


_Route = Callable[[LabAuthority, Account, str, SignedRequest], Reply]

_RESOURCE_ROUTES: dict[tuple[str, str], _Route] = {
    ("account", ""): LabAuthority._account,
    ("account", "/orders"): LabAuthority._account_orders,
    ("order", ""): LabAuthority._order,
    ("order", "/finalize"): LabAuthority._finalize,
    ("authz", ""): LabAuthority._authorization,
    ("chall", ""): LabAuthority._challenge,
    ("cert", ""): LabAuthority._certificate,
}


def _decode_csr(value: object) -> x509.CertificateSigningRequest:
    if not isinstance(value, str):
        raise AcmeProblem("malformed", "finalize payload has no csr")
    der = jws.b64url_decode(value, "csr")
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise AcmeProblem("badCSR", f"CSR is not valid DER: {exc}") from exc
    if not csr.is_signature_valid:
        raise AcmeProblem("badCSR", "CSR signature is invalid")
    return csr


def _csr_names(csr: x509.CertificateSigningRequest) -> set[str]:
    # RFC 8555 section 7.4: the CSR names the identifiers in its subject
    # alternative names and, optionally, in its common name.
    names = {
        attribute.value.lower()
        for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(attribute.value, str)
    }
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return names
    return names | {
        name.lower() for name in sans.value.get_values_for_type(x509.DNSName)
    }
