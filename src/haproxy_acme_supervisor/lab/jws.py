"""JWS parsing and verification for ACME requests (RFC 7515, RFC 8555 section 6.2).

Only what ACME allows is accepted: the flattened JSON serialization, one
signature, a protected header and no unprotected one. Supported algorithms
are ES256, ES384, ES512 and RS256. Every failure raises AcmeProblem.
"""

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from haproxy_acme_supervisor.lab.errors import AcmeProblem

JwsPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# ECDSA algorithms and the JWK curve each one requires (RFC 7518 section 3.4).
_EC_ALGORITHMS: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    "ES256": ("P-256", hashes.SHA256()),
    "ES384": ("P-384", hashes.SHA384()),
    "ES512": ("P-521", hashes.SHA512()),
}
_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
SUPPORTED_ALGORITHMS = (*_EC_ALGORITHMS, "RS256")

_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Jws:
    """A parsed flattened JWS whose signature is not checked yet."""

    protected: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def algorithm(self) -> str:
        """The ``alg`` member of the protected header."""
        return str(self.protected["alg"])


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, field: str) -> bytes:
    """Decode unpadded base64url, or raise a ``malformed`` problem naming ``field``."""
    if not isinstance(text, str) or not _BASE64URL.match(text):
        raise AcmeProblem("malformed", f"{field} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise AcmeProblem("malformed", f"{field} is not base64url: {exc}") from exc


def parse_jws(body: bytes) -> Jws:
    """Parse a flattened JWS and its protected header (RFC 8555 section 6.2)."""
    document = _load_json_object(body, "request body")
    if "signatures" in document or "header" in document:
        raise AcmeProblem(
            "malformed",
            "only the flattened JWS serialization with a protected header is allowed",
        )
    for member in ("protected", "payload", "signature"):
        if not isinstance(document.get(member), str):
            raise AcmeProblem("malformed", f"JWS member {member!r} is missing")

    protected_text = document["protected"]
    payload_text = document["payload"]
    protected = _load_json_object(
        b64url_decode(protected_text, "protected"), "protected header"
    )
    _check_protected(protected)
    return Jws(
        protected=protected,
        payload=b64url_decode(payload_text, "payload"),
        signing_input=f"{protected_text}.{payload_text}".encode("ascii"),
        signature=b64url_decode(document["signature"], "signature"),
    )


def public_key_from_jwk(jwk: object) -> JwsPublicKey:
    """Build the public key of an EC or RSA JWK (RFC 7518 section 6)."""
    if not isinstance(jwk, dict):
        raise AcmeProblem("malformed", "jwk is not a JSON object")
    if jwk.get("kty") == "EC":
        return _ec_key_from_jwk(jwk)
    if jwk.get("kty") == "RSA":
        exponent = int.from_bytes(b64url_decode(jwk.get("e", ""), "jwk e"), "big")
        modulus = int.from_bytes(b64url_decode(jwk.get("n", ""), "jwk n"), "big")
        if modulus.bit_length() < 2048:
            raise AcmeProblem("badPublicKey", "RSA keys must be at least 2048 bits")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    raise AcmeProblem("badPublicKey", f"unsupported jwk kty {jwk.get('kty')!r}")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """Return the base64url SHA-256 JWK thumbprint (RFC 7638 section 3).

    The thumbprint hashes the required members only, sorted, without
    whitespace, as the client sent them.
    """
    members = ("crv", "kty", "x", "y") if jwk.get("kty") == "EC" else ("e", "kty", "n")
    canonical = json.dumps(
        {name: jwk[name] for name in members}, sort_keys=True, separators=(",", ":")
    )
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def verify_signature(jws: Jws, key: JwsPublicKey) -> None:
    """Raise a problem unless ``jws`` is signed by ``key`` with its ``alg``."""
    algorithm = jws.algorithm
    try:
        if algorithm == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(
                jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256()
            )
        elif algorithm in _EC_ALGORITHMS and isinstance(key, ec.EllipticCurvePublicKey):
            _verify_ecdsa(jws, key, algorithm)
        else:
            raise AcmeProblem(
                "badSignatureAlgorithm",
                f"alg {algorithm} does not match the account key type",
            )
    except InvalidSignature as exc:
        raise AcmeProblem("malformed", "JWS signature is invalid") from exc


def _verify_ecdsa(jws: Jws, key: ec.EllipticCurvePublicKey, algorithm: str) -> None:
    curve_name, digest = _EC_ALGORITHMS[algorithm]
    curve, size = _CURVES[curve_name]
    if key.curve.name != curve.name:
        raise AcmeProblem(
            "badSignatureAlgorithm", f"alg {algorithm} requires a {curve_name} key"
        )
    # JWS carries the raw big-endian r || s (RFC 7518 section 3.4), while
    # cryptography verifies the DER encoding.
    if len(jws.signature) != 2 * size:
        raise AcmeProblem(
            "malformed",
            f"{algorithm} signature is {len(jws.signature)} bytes, expected {2 * size}",
        )
    r = int.from_bytes(jws.signature[:size], "big")
    s = int.from_bytes(jws.signature[size:], "big")
    key.verify(utils.encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(digest))


def _ec_key_from_jwk(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    curve_name = jwk.get("crv")
    if curve_name not in _CURVES:
        raise AcmeProblem("badPublicKey", f"unsupported jwk crv {curve_name!r}")
    curve, size = _CURVES[curve_name]

    coordinates = []
    for member in ("x", "y"):
        raw = b64url_decode(jwk.get(member, ""), f"jwk {member}")
        # RFC 7518 section 6.2.1.2: the coordinate MUST be the full size of
        # the curve, so a client that strips leading zero bytes is rejected.
        if len(raw) != size:
            raise AcmeProblem(
                "malformed",
                f"jwk {member} is {len(raw)} bytes, {curve_name} requires {size}",
            )
        coordinates.append(int.from_bytes(raw, "big"))

    try:
        numbers = ec.EllipticCurvePublicNumbers(coordinates[0], coordinates[1], curve)
        return numbers.public_key()
    except ValueError as exc:
        raise AcmeProblem("badPublicKey", "jwk point is not on the curve") from exc


def _check_protected(protected: dict[str, Any]) -> None:
    algorithm = protected.get("alg")
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise AcmeProblem(
            "badSignatureAlgorithm",
            f"alg {algorithm!r} is not supported, use one of "
            + ", ".join(SUPPORTED_ALGORITHMS),
        )
    for member in ("nonce", "url"):
        if not isinstance(protected.get(member), str):
            raise AcmeProblem("malformed", f"protected header has no {member!r}")
    # RFC 8555 section 6.2: exactly one of "jwk" and "kid".
    if ("jwk" in protected) == ("kid" in protected):
        raise AcmeProblem(
            "malformed", "protected header must contain exactly one of jwk and kid"
        )


def _load_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AcmeProblem("malformed", f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise AcmeProblem("malformed", f"{what} is not a JSON object")
    return document
