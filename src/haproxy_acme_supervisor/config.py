"""Settings of the ``run`` command, read from the environment and validated.

Every value ends up inside ``haproxy.cfg``. HAProxy's parser splits on white
space, expands ``${VAR}`` inside double quotes and treats ``#`` as a comment.
Each value is therefore checked against a strict pattern here, and a value that
passes cannot add a line, a keyword or a variable expansion to the
configuration.
"""

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

# A label of a DNS host name (RFC 1123): letters, digits and inner hyphens.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_WILDCARD = re.compile(rf"\*\.(?:{_LABEL}\.)*{_LABEL}")
# The local part leaves out '#' (starts a comment in haproxy.cfg), "'" (starts a
# quoted string) and '$' (variable expansion) from RFC 5322's atom characters.
_EMAIL = re.compile(r"[A-Za-z0-9.!%&*+/=?^_`{|}~-]+@" + _HOST_NAME.pattern, re.I)
# Characters allowed in a path written into haproxy.cfg: no white space, no
# quotes, no '$' (variable expansion), no '#' (comment).
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/@+=,:-]+")
# RFC 3986 URL characters without "'", which starts a quoted string in haproxy.cfg.
_URL_TEXT = re.compile(r"[A-Za-z0-9._~:/?\[\]@!&()*+,;=%-]+")
# ASCII digits only: str.isdigit() also accepts characters such as '²' that
# int() rejects.
_DIGITS = re.compile(r"[0-9]+")
# A last label that clients parse as part of an IPv4 address (decimal or hex,
# as in the WHATWG URL standard). No top-level domain looks like this.
_NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})

DEFAULT_CERT_DIR = Path("/usr/local/etc/haproxy/certs")
DEFAULT_RUN_DIR = Path("/var/run/haproxy")

# Names of the three PEM files in CERT_DIR and of the ACME account key.
ACCOUNT_KEY_NAME = "acme.account.key"
BOOTSTRAP_NAME = "bootstrap.pem"
STAGED_NAME = "certlocker.acme.pem"
LIVE_NAME = "live.pem"
# Record of the promoted certificate's origin (no key material), beside live.pem.
LIVE_RECORD_NAME = "live.json"

# The crt-store section and alias under which HAProxy keeps the staged bundle.
STAGED_STORE = "certlocker-certs"
STAGED_ALIAS = "certlocker"


@dataclass(frozen=True)
class Endpoint:
    """A ``host:port`` pair, with the host kept as HAProxy spells it."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CertPaths:
    """Paths of the files the supervisor keeps in the certificate directory."""

    cert_dir: Path

    @property
    def account_key(self) -> Path:
        return self.cert_dir / ACCOUNT_KEY_NAME

    @property
    def bootstrap(self) -> Path:
        return self.cert_dir / BOOTSTRAP_NAME

    @property
    def staged(self) -> Path:
        return self.cert_dir / STAGED_NAME

    @property
    def live(self) -> Path:
        return self.cert_dir / LIVE_NAME

    @property
    def live_record(self) -> Path:
        return self.cert_dir / LIVE_RECORD_NAME


@dataclass(frozen=True)
class CertificateSpec:
    """One certificate the supervisor manages: its staging alias and names.

    The supervisor manages one certificate today; settings keep a tuple of
    these so that serving several by SNI adds entries, not code paths.
    """

    name: str
    domains: tuple[str, ...]
    store: str = STAGED_STORE
    alias: str = STAGED_ALIAS

    @property
    def staged_ref(self) -> str:
        """Name of the staged bundle on HAProxy's runtime API."""
        return f"@{self.store}/{self.alias}"


@dataclass(frozen=True)
class Settings:
    """Everything ``run`` needs, validated."""

    haproxy_bin: str
    cert_dir: Path
    run_dir: Path
    template: Path | None
    acme_directory: str
    acme_contact: str | None
    certificates: tuple[CertificateSpec, ...]
    keytype: str
    curves: str
    bits: int
    ca_file: Path | None
    resolver: Endpoint | None
    http_bind: Endpoint
    https_bind: Endpoint
    require_seeded_key: bool
    reuse_key: bool
    insecure_skip_verify: bool
    renew_on_start: str
    stop_grace_seconds: float
    staged_poll_seconds: float

    @property
    def paths(self) -> CertPaths:
        return CertPaths(self.cert_dir)

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.run_dir / "master.sock"

    @property
    def rendered_config(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def domains(self) -> tuple[str, ...]:
        """Every domain of every managed certificate, in order."""
        return tuple(name for spec in self.certificates for name in spec.domains)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and validate the ``run`` command's environment variables.

    Raises ``ConfigError`` naming the first invalid variable.
    """
    reader = _Reader(environ)
    domains = reader.domains("ACME_DOMAINS")
    keytype = reader.choice("ACME_KEYTYPE", ("ECDSA", "RSA"), "ECDSA")
    http_bind = reader.bind("HTTP_BIND", "*:80")
    https_bind = reader.bind("HTTPS_BIND", "*:443")
    if _binds_overlap(http_bind, https_bind):
        raise ConfigError(
            "HTTPS_BIND",
            str(https_bind),
            f"listens on the same address and port as HTTP_BIND={http_bind}; "
            "HAProxy would split connections between the two frontends",
        )
    return Settings(
        haproxy_bin=reader.path_text("HAPROXY_BIN", "haproxy"),
        cert_dir=reader.directory("CERT_DIR", DEFAULT_CERT_DIR),
        run_dir=reader.directory("RUN_DIR", DEFAULT_RUN_DIR),
        template=reader.optional_file("HAPROXY_CONFIG_TEMPLATE"),
        acme_directory=reader.https_url("ACME_DIRECTORY"),
        acme_contact=reader.optional_email("ACME_CONTACT"),
        certificates=(CertificateSpec(name=STAGED_ALIAS, domains=domains),),
        keytype=keytype,
        curves=reader.choice("ACME_CURVES", ("P-256", "P-384", "P-521"), "P-384"),
        bits=reader.integer("ACME_BITS", 2048, minimum=2048, maximum=8192),
        ca_file=reader.optional_file("ACME_CA_FILE"),
        resolver=reader.optional_endpoint("ACME_RESOLVER"),
        http_bind=http_bind,
        https_bind=https_bind,
        require_seeded_key=reader.boolean("CERTLOCKER_ACME_REQUIRE_SEEDED_KEY", True),
        reuse_key=reader.boolean("ACME_REUSE_KEY", True),
        insecure_skip_verify=reader.boolean("ACME_INSECURE_SKIP_VERIFY", False),
        renew_on_start=reader.choice(
            "ACME_RENEW_ON_START", ("auto", "always", "never"), "auto"
        ),
        stop_grace_seconds=reader.seconds("STOP_GRACE_SECONDS", 10.0),
        staged_poll_seconds=reader.seconds("STAGED_POLL_SECONDS", 300.0),
    )


class _Reader:
    """Typed access to environment variables; each method raises ConfigError."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _required(self, name: str, example: str) -> str:
        value = self._get(name)
        if value is None:
            raise ConfigError(name, "", f"missing; set it, for example {example}")
        return value

    def path_text(self, name: str, default: str) -> str:
        value = self._get(name) or default
        if not _SAFE_PATH.fullmatch(value):
            raise ConfigError(name, value, _PATH_RULE)
        return value

    def directory(self, name: str, default: Path) -> Path:
        value = self._get(name)
        path = Path(value) if value else default
        if not _SAFE_PATH.fullmatch(str(path)):
            raise ConfigError(name, str(path), _PATH_RULE)
        if not path.is_absolute():
            raise ConfigError(name, str(path), "must be an absolute path")
        return path

    def optional_file(self, name: str) -> Path | None:
        value = self._get(name)
        if value is None:
            return None
        if not _SAFE_PATH.fullmatch(value):
            raise ConfigError(name, value, _PATH_RULE)
        # The working directory is prepended to a relative value and lands in
        # haproxy.cfg too, so the absolute path is checked again.
        path = Path(value).absolute()
        if not _SAFE_PATH.fullmatch(str(path)):
            raise ConfigError(name, str(path), f"as an absolute path, {_PATH_RULE}")
        if not path.is_file():
            raise ConfigError(name, value, "file not found")
        return path

    def https_url(self, name: str) -> str:
        value = self._required(
            name, "https://acme-staging-v02.api.letsencrypt.org/directory"
        )
        if not _URL_TEXT.fullmatch(value):
            raise ConfigError(name, value, "contains characters not allowed in a URL")
        parts = urlsplit(value)
        # RFC 8555 section 6.1: ACME runs over HTTPS only.
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(name, value, "must be an https:// URL with a host")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(name, value, "has an invalid port") from exc
        if port == 0:
            raise ConfigError(name, value, "has port 0; use a port from 1 to 65535")
        return value

    def optional_email(self, name: str) -> str | None:
        value = self._get(name)
        if value is None:
            return None
        address = value.removeprefix("mailto:")
        if not _EMAIL.fullmatch(address):
            raise ConfigError(name, value, "must be an e-mail address")
        return address

    def domains(self, name: str) -> tuple[str, ...]:
        value = self._required(name, "example.com,www.example.com")
        names: list[str] = []
        for raw in value.split(","):
            domain = raw.strip().lower().rstrip(".")
            if not domain:
                raise ConfigError(name, value, "contains an empty domain")
            pattern = _WILDCARD if domain.startswith("*.") else _HOST_NAME
            if len(domain) > 253 or not pattern.fullmatch(domain):
                raise ConfigError(
                    name, value, f"'{domain}' is not a host name or a wildcard '*.name'"
                )
            if _NUMBER_LABEL.fullmatch(domain.rsplit(".", 1)[-1]):
                raise ConfigError(
                    name,
                    value,
                    f"'{domain}' reads as an IP address; IP addresses cannot be "
                    "validated with http-01 here; use a DNS name",
                )
            if domain in names:
                raise ConfigError(name, value, f"'{domain}' is listed twice")
            names.append(domain)
        return tuple(names)

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self._get(name)
        if value is None:
            return default
        for candidate in allowed:
            if value.upper() == candidate.upper():
                return candidate
        raise ConfigError(name, value, f"must be one of {', '.join(allowed)}")

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        if not _DIGITS.fullmatch(value) or not minimum <= int(value) <= maximum:
            raise ConfigError(
                name, value, f"must be a whole number from {minimum} to {maximum}"
            )
        return int(value)

    def seconds(self, name: str, default: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0 < number <= 86400:
            raise ConfigError(
                name, value, "must be a number of seconds from 0 to 86400"
            )
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if value.lower() in _TRUE_WORDS:
            return True
        if value.lower() in _FALSE_WORDS:
            return False
        raise ConfigError(name, value, "must be 1 or 0 (or true/false, yes/no, on/off)")

    def optional_endpoint(self, name: str) -> Endpoint | None:
        value = self._get(name)
        if value is None:
            return None
        return _parse_endpoint(name, value, allow_any=False)

    def bind(self, name: str, default: str) -> Endpoint:
        return _parse_endpoint(name, self._get(name) or default, allow_any=True)


_PATH_RULE = "paths may contain only letters, digits and . _ / @ + = , : -"


def _parse_endpoint(name: str, value: str, *, allow_any: bool) -> Endpoint:
    """Parse ``host:port``, ``[v6]:port`` or, for binds, ``*:port`` / ``:port``."""
    host, separator, port_text = value.rpartition(":")
    if (
        not separator
        or not _DIGITS.fullmatch(port_text)
        or not 0 < int(port_text) < 65536
    ):
        raise ConfigError(name, value, "must be host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        address = host[1:-1]
    else:
        address = host
    if allow_any and host in ("", "*"):
        return Endpoint(host, int(port_text))
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ConfigError(
            name,
            value,
            "the host must be an IPv4 address or an IPv6 address in brackets",
        ) from exc
    # Python accepts any text after '%' as an IPv6 zone, even spaces and
    # newlines. HAProxy 3.2 rejects a zone in a bind address, so none is allowed.
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is not None:
        raise ConfigError(name, value, "an IPv6 address must not have a %zone")
    if parsed.version == 6 and host == address:
        raise ConfigError(name, value, "write an IPv6 address in brackets: [::1]:53")
    return Endpoint(host, int(port_text))


def _binds_overlap(first: Endpoint, second: Endpoint) -> bool:
    """Tell whether two binds would receive the same connections.

    They do when the ports are equal and either host is a wildcard (``*``,
    empty or an unspecified address) or both name the same address.
    """
    if first.port != second.port:
        return False
    addresses = [_bind_address(first.host), _bind_address(second.host)]
    if any(address is None or address.is_unspecified for address in addresses):
        return True
    return addresses[0] == addresses[1]


def _bind_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the address of a validated bind host, or None for ``*`` and empty."""
    if host in ("", "*"):
        return None
    return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
