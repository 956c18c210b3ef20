"""Errors raised by the lab vault and the lab ACME gateway."""

import json
from pathlib import Path

# ACME error types, RFC 8555 section 6.7.
ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"


class LabError(Exception):
    """Root of the errors raised by the lab package."""


class VaultError(LabError):
    """A vault directory is missing, incomplete or unreadable."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class AcmeProblem(LabError):
    """A failed ACME request, rendered as an RFC 7807 problem document.

    ``kind`` is the last part of the ACME error URN (``badNonce``,
    ``malformed``...), ``status`` the HTTP status code of the response.
    """

    def __init__(self, kind: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status

    @property
    def type_urn(self) -> str:
        """The full ACME error URN, such as ``urn:ietf:params:acme:error:badNonce``."""
        return ACME_ERROR_PREFIX + self.kind

    def to_document(self) -> dict[str, object]:
        """Return the problem as a JSON-ready object."""
        return {"type": self.type_urn, "detail": self.detail, "status": self.status}

    def to_json(self) -> bytes:
        """Return the problem document as UTF-8 JSON."""
        return json.dumps(self.to_document()).encode()
