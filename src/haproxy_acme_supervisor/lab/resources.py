"""ACME resources kept in memory by the lab gateway (RFC 8555 section 7.1).

Objects are mutable and carry no lock: the authority guards all of them with
its own lock. ``render`` methods build the JSON objects the protocol returns,
given the URL layout of the server.
"""

import datetime
import secrets
from dataclasses import dataclass, field
from typing import Any

from haproxy_acme_supervisor.lab.jws import JwsPublicKey

# Lifetime stated in "expires" of new orders and authorizations.
# NOTE: the gateway states this expiry but never enforces it, because its
# resources live only in memory for the life of one process.
RESOURCE_LIFETIME = datetime.timedelta(days=7)


def new_id() -> str:
    """Return a random URL-safe resource id."""
    return secrets.token_urlsafe(12)


def timestamp(moment: datetime.datetime | None = None) -> str:
    """Format ``moment`` (default: now) as an RFC 3339 UTC time."""
    moment = moment or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def expiry() -> str:
    """Return the ``expires`` value for a resource created now."""
    return timestamp(datetime.datetime.now(datetime.UTC) + RESOURCE_LIFETIME)


@dataclass(frozen=True)
class UrlLayout:
    """The URLs of the server, built from its base URL ``https://host:port``."""

    base: str

    @property
    def directory(self) -> str:
        """The directory URL that clients are configured with."""
        return f"{self.base}/directory"

    @property
    def new_nonce(self) -> str:
        """The newNonce URL."""
        return f"{self.base}/new-nonce"

    @property
    def new_account(self) -> str:
        """The newAccount URL."""
        return f"{self.base}/new-account"

    @property
    def new_order(self) -> str:
        """The newOrder URL."""
        return f"{self.base}/new-order"

    def resource(self, kind: str, resource_id: str) -> str:
        """Return the URL of one resource, for example ``/acme/order/ID``."""
        return f"{self.base}/acme/{kind}/{resource_id}"


@dataclass
class Account:
    """An ACME account, identified by the thumbprint of its key."""

    id: str
    thumbprint: str
    key: JwsPublicKey
    contact: list[str]
    order_ids: list[str] = field(default_factory=list)
    status: str = "valid"

    def render(self, urls: UrlLayout) -> dict[str, Any]:
        """Return the account object (RFC 8555 section 7.1.2)."""
        return {
            "status": self.status,
            "contact": self.contact,
            "orders": urls.resource("account", self.id) + "/orders",
        }


@dataclass
class Challenge:
    """The http-01 challenge of one authorization."""

    id: str
    token: str
    status: str = "pending"
    validated: str | None = None
    error: dict[str, Any] | None = None

    def render(self, urls: UrlLayout) -> dict[str, Any]:
        """Return the challenge object (RFC 8555 section 8)."""
        document: dict[str, Any] = {
            "type": "http-01",
            "url": urls.resource("chall", self.id),
            "status": self.status,
            "token": self.token,
        }
        if self.validated:
            document["validated"] = self.validated
        if self.error:
            document["error"] = self.error
        return document


@dataclass
class Authorization:
    """An authorization for one DNS name of one order."""

    id: str
    account_id: str
    order_id: str
    domain: str
    challenge: Challenge
    expires: str = field(default_factory=expiry)
    status: str = "pending"

    def render(self, urls: UrlLayout) -> dict[str, Any]:
        """Return the authorization object (RFC 8555 section 7.1.4)."""
        return {
            "status": self.status,
            "expires": self.expires,
            "identifier": {"type": "dns", "value": self.domain},
            "challenges": [self.challenge.render(urls)],
        }


@dataclass
class Order:
    """An order for a set of DNS names."""

    id: str
    account_id: str
    domains: list[str]
    authorization_ids: list[str]
    expires: str = field(default_factory=expiry)
    status: str = "pending"
    error: dict[str, Any] | None = None
    csr_public_sha256: str | None = None

    def render(self, urls: UrlLayout) -> dict[str, Any]:
        """Return the order object (RFC 8555 section 7.1.3)."""
        document: dict[str, Any] = {
            "status": self.status,
            "expires": self.expires,
            "identifiers": [{"type": "dns", "value": name} for name in self.domains],
            "authorizations": [
                urls.resource("authz", authz_id) for authz_id in self.authorization_ids
            ],
            "finalize": urls.resource("order", self.id) + "/finalize",
        }
        if self.status == "valid":
            document["certificate"] = urls.resource("cert", self.id)
        if self.error:
            document["error"] = self.error
        return document
