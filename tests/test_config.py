"""Tests for ``load_settings``: defaults, valid values and every rejection."""

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from haproxy_acme_supervisor.config import (
    DEFAULT_CERT_DIR,
    DEFAULT_RUN_DIR,
    STAGED_ALIAS,
    STAGED_STORE,
    CertPaths,
    Endpoint,
    Settings,
    load_settings,
)
from haproxy_acme_supervisor.errors import ConfigError, ExitCode

DIRECTORY = "https://acme.example.net/directory"
REQUIRED = {"ACME_DOMAINS": "example.com", "ACME_DIRECTORY": DIRECTORY}

# Values that would end a line, split a keyword, start a comment, start a
# quoted string or expand a variable if they reached haproxy.cfg.
INJECTIONS = [
    "a\nb",
    "a\rb",
    "a b",
    "a\tb",
    "a#b",
    "a${HOME}b",
    'a"b',
    "a'b",
    "a\\b",
]

# Settings attribute of each variable that names a file.
_FILE_FIELDS = {"HAPROXY_CONFIG_TEMPLATE": "template", "ACME_CA_FILE": "ca_file"}
# Settings attribute of each boolean variable.
_BOOLEAN_FIELDS = {
    "CERTLOCKER_ACME_REQUIRE_SEEDED_KEY": "require_seeded_key",
    "ACME_REUSE_KEY": "reuse_key",
    "ACME_INSECURE_SKIP_VERIFY": "insecure_skip_verify",
}


def load(**overrides: str) -> Settings:
    """Load settings from the required variables plus ``overrides``."""
    environ: Mapping[str, str] = {**REQUIRED, **overrides}
    return load_settings(environ)


def rejection(**overrides: str) -> ConfigError:
    """Return the ConfigError that ``overrides`` cause."""
    with pytest.raises(ConfigError) as caught:
        load(**overrides)
    return caught.value


class TestDefaults:
    def test_required_only_uses_defaults(self) -> None:
        """Only the two required variables give the documented defaults."""
        settings = load()
        assert settings.haproxy_bin == "haproxy"
        assert settings.cert_dir == DEFAULT_CERT_DIR
        assert settings.run_dir == DEFAULT_RUN_DIR
        assert settings.template is None
        assert settings.acme_contact is None
        assert settings.keytype == "ECDSA"
        assert settings.curves == "P-384"
        assert settings.bits == 2048
        assert settings.ca_file is None
        assert settings.resolver is None
        assert settings.http_bind == Endpoint("*", 80)
        assert settings.https_bind == Endpoint("*", 443)
        assert settings.require_seeded_key is True
        assert settings.reuse_key is True
        assert settings.insecure_skip_verify is False
        assert settings.stop_grace_seconds == 10.0
        assert settings.staged_poll_seconds == 300.0

    def test_single_certificate_spec(self) -> None:
        """One certificate is managed, under the fixed store and alias."""
        settings = load(ACME_DOMAINS="example.com,www.example.com")
        assert len(settings.certificates) == 1
        spec = settings.certificates[0]
        assert spec.name == STAGED_ALIAS
        assert spec.domains == ("example.com", "www.example.com")
        assert spec.staged_ref == f"@{STAGED_STORE}/{STAGED_ALIAS}"
        assert settings.domains == ("example.com", "www.example.com")

    def test_derived_paths(self) -> None:
        """Sockets, rendered config and PEM files sit in the configured dirs."""
        settings = load(CERT_DIR="/srv/certs", RUN_DIR="/srv/run")
        assert settings.paths == CertPaths(Path("/srv/certs"))
        assert settings.paths.account_key == Path("/srv/certs/acme.account.key")
        assert settings.paths.bootstrap == Path("/srv/certs/bootstrap.pem")
        assert settings.paths.staged == Path("/srv/certs/certlocker.acme.pem")
        assert settings.paths.live == Path("/srv/certs/live.pem")
        assert settings.admin_socket == Path("/srv/run/admin.sock")
        assert settings.master_socket == Path("/srv/run/master.sock")
        assert settings.rendered_config == Path("/srv/run/haproxy.cfg")

    def test_blank_value_means_default(self) -> None:
        """A variable set to white space counts as unset."""
        settings = load(ACME_KEYTYPE="  ", HTTP_BIND="", ACME_CONTACT=" ")
        assert settings.keytype == "ECDSA"
        assert settings.http_bind == Endpoint("*", 80)
        assert settings.acme_contact is None


class TestConfigError:
    def test_error_names_variable(self) -> None:
        """The message starts with the variable and shows the value."""
        error = rejection(ACME_BITS="12")
        assert error.variable == "ACME_BITS"
        assert str(error).startswith("ACME_BITS='12' is invalid: ")

    def test_exit_code_is_config(self) -> None:
        """A configuration error exits with EX_CONFIG (78)."""
        assert rejection(ACME_BITS="12").exit_code == ExitCode.CONFIG_ERROR

    def test_long_value_is_shortened(self) -> None:
        """Values over 80 characters are cut in the message, not the attribute."""
        value = "x" * 200
        error = rejection(ACME_KEYTYPE=value)
        assert error.value == value
        assert value not in str(error)
        assert "x" * 77 + "..." in str(error)


class TestRequired:
    @pytest.mark.parametrize("name", ["ACME_DOMAINS", "ACME_DIRECTORY"])
    def test_missing_variable_rejected(self, name: str) -> None:
        """Each required variable must be set."""
        environ = {key: value for key, value in REQUIRED.items() if key != name}
        with pytest.raises(ConfigError) as caught:
            load_settings(environ)
        assert caught.value.variable == name
        assert "missing" in caught.value.reason

    @pytest.mark.parametrize("name", ["ACME_DOMAINS", "ACME_DIRECTORY"])
    def test_blank_required_rejected(self, name: str) -> None:
        """A required variable set to white space is missing."""
        error = rejection(**{name: "   "})
        assert error.variable == name


class TestDomains:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("example.com", ("example.com",)),
            ("Example.COM", ("example.com",)),
            ("example.com.", ("example.com",)),
            (" a.example.com , b.example.com ", ("a.example.com", "b.example.com")),
            ("*.example.com", ("*.example.com",)),
            ("example.com,*.example.com", ("example.com", "*.example.com")),
            ("xn--bcher-kva.example", ("xn--bcher-kva.example",)),
            ("a-b.example.com", ("a-b.example.com",)),
            ("localhost", ("localhost",)),
            ("a" * 63 + ".com", ("a" * 63 + ".com",)),
        ],
    )
    def test_valid_domains_accepted(self, value: str, expected: tuple[str]) -> None:
        """Host names and one leading wildcard are accepted and normalised."""
        assert load(ACME_DOMAINS=value).domains == expected

    @pytest.mark.parametrize(
        "value",
        [
            "example.com,",
            ",example.com",
            "a.example.com,,b.example.com",
            "-example.com",
            "example-.com",
            "exa_mple.com",
            "a..example.com",
            "*",
            "*.",
            "a.*.example.com",
            "*.*.example.com",
            "*example.com",
            "w*.example.com",
            "bücher.example",
            "a" * 64 + ".com",
            ("a" * 63 + ".") * 4 + "com",
            "127.0.0.1:80",
            "[::1]",
            "example.com/path",
            *(f"example.com{text}" for text in INJECTIONS),
        ],
    )
    def test_invalid_domain_rejected(self, value: str) -> None:
        """Anything but host names and '*.name' raises ConfigError."""
        assert rejection(ACME_DOMAINS=value).variable == "ACME_DOMAINS"

    @pytest.mark.parametrize(
        "value",
        [
            "127.0.0.1",
            "10.0.0.1.",
            "example.com,192.0.2.7",
            "1.2.3",
            "2130706433",
            "0x7f.0.0.1",
            "*.0.0.1",
            "host.0x1f",
        ],
    )
    def test_ip_address_rejected(self, value: str) -> None:
        """Names that clients read as IPv4 addresses are refused with a hint."""
        error = rejection(ACME_DOMAINS=value)
        assert "IP addresses cannot be validated with http-01" in error.reason
        assert error.reason.endswith("use a DNS name")

    @pytest.mark.parametrize(
        "value", ["1.example.com", "123.example", "example.com1", "0xcafe.example"]
    )
    def test_numeric_inner_label_accepted(self, value: str) -> None:
        """Digits are fine in any label but the last."""
        assert load(ACME_DOMAINS=value).domains == (value,)

    @pytest.mark.parametrize(
        "value",
        ["example.com,example.com", "example.com,EXAMPLE.com", "a.com,a.com."],
    )
    def test_duplicate_domain_rejected(self, value: str) -> None:
        """A domain listed twice, after normalising, is rejected."""
        error = rejection(ACME_DOMAINS=value)
        assert "listed twice" in error.reason


class TestDirectory:
    @pytest.mark.parametrize(
        "value",
        [
            DIRECTORY,
            "https://127.0.0.1:14000/dir",
            "https://[::1]:14000/dir",
            "https://acme.example.net/acme/directory?x=1&y=%20",
            "HTTPS://acme.example.net/directory",
        ],
    )
    def test_https_url_accepted(self, value: str) -> None:
        """An https:// URL with a host is kept verbatim."""
        assert load(ACME_DIRECTORY=value).acme_directory == value

    @pytest.mark.parametrize(
        "value",
        [
            "http://acme.example.net/directory",
            "ftp://acme.example.net/directory",
            "acme.example.net/directory",
            "https:///directory",
            "https://acme.example.net:99999/directory",
            "https://acme.example.net:port/directory",
            "https://acme.example.net/dir#fragment",
            "https://acme.example.net/${HOME}",
            *(f"https://acme.example.net/{text}" for text in INJECTIONS),
        ],
    )
    def test_invalid_url_rejected(self, value: str) -> None:
        """Other schemes, missing hosts, bad ports and unsafe text are rejected."""
        assert rejection(ACME_DIRECTORY=value).variable == "ACME_DIRECTORY"

    def test_port_zero_rejected(self) -> None:
        """A directory URL with port 0 is rejected."""
        error = rejection(ACME_DIRECTORY="https://acme.example.net:0/directory")
        assert error.variable == "ACME_DIRECTORY"
        assert "port 0" in error.reason

    def test_http_scheme_reason(self) -> None:
        """The reason for rejecting http:// asks for https://."""
        error = rejection(ACME_DIRECTORY="http://acme.example.net/directory")
        assert "https://" in error.reason


class TestContact:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("admin@example.com", "admin@example.com"),
            ("mailto:admin@example.com", "admin@example.com"),
            ("first.last+acme@Mail.Example.com", "first.last+acme@Mail.Example.com"),
        ],
    )
    def test_email_accepted(self, value: str, expected: str) -> None:
        """An address, with or without mailto:, is stored without the prefix."""
        assert load(ACME_CONTACT=value).acme_contact == expected

    @pytest.mark.parametrize(
        "value",
        [
            "admin",
            "@example.com",
            "admin@",
            "mailto:",
            "admin@example..com",
            "admin@-example.com",
            "admin@exa mple.com",
            "a@b@example.com",
            *(f"{text}@example.com" for text in INJECTIONS),
            *(f"admin@example.com{text}" for text in INJECTIONS),
        ],
    )
    def test_invalid_contact_rejected(self, value: str) -> None:
        """Malformed addresses and haproxy.cfg syntax characters are rejected."""
        assert rejection(ACME_CONTACT=value).variable == "ACME_CONTACT"


class TestChoices:
    @pytest.mark.parametrize(
        ("value", "expected"), [("ecdsa", "ECDSA"), ("RSA", "RSA"), ("rsa", "RSA")]
    )
    def test_keytype_case_insensitive(self, value: str, expected: str) -> None:
        """ACME_KEYTYPE is matched without case and returned as spelt."""
        assert load(ACME_KEYTYPE=value).keytype == expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("p-256", "P-256"), ("P-384", "P-384"), ("p-521", "P-521")],
    )
    def test_curves_case_insensitive(self, value: str, expected: str) -> None:
        """ACME_CURVES accepts the three NIST curves HAProxy supports."""
        assert load(ACME_CURVES=value).curves == expected

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("ACME_KEYTYPE", "DSA"),
            ("ACME_KEYTYPE", "ECDSA RSA"),
            ("ACME_KEYTYPE", "ECDSA\nglobal"),
            ("ACME_CURVES", "P-224"),
            ("ACME_CURVES", "secp384r1"),
            ("ACME_CURVES", "P-384 #"),
        ],
    )
    def test_unknown_choice_rejected(self, name: str, value: str) -> None:
        """A value outside the list raises ConfigError naming the variable."""
        assert rejection(**{name: value}).variable == name


class TestNumbers:
    @pytest.mark.parametrize(
        ("value", "expected"), [("2048", 2048), ("4096", 4096), ("8192", 8192)]
    )
    def test_bits_in_range_accepted(self, value: str, expected: int) -> None:
        """ACME_BITS accepts whole numbers from 2048 to 8192."""
        assert load(ACME_BITS=value).bits == expected

    @pytest.mark.parametrize(
        "value",
        ["2047", "8193", "0", "-4096", "4096.0", "4k", "0x800", "2048²", "٤٠٩٦"],
    )
    def test_bad_bits_rejected(self, value: str) -> None:
        """Out-of-range, signed, fractional and non-ASCII numbers are rejected."""
        assert rejection(ACME_BITS=value).variable == "ACME_BITS"

    @pytest.mark.parametrize("name", ["STOP_GRACE_SECONDS", "STAGED_POLL_SECONDS"])
    @pytest.mark.parametrize(
        ("value", "expected"), [("0.5", 0.5), ("30", 30.0), ("86400", 86400.0)]
    )
    def test_seconds_accepted(self, name: str, value: str, expected: float) -> None:
        """Durations above 0 and up to a day are accepted as floats."""
        settings = load(**{name: value})
        field = name.lower()
        assert getattr(settings, field) == expected

    @pytest.mark.parametrize("name", ["STOP_GRACE_SECONDS", "STAGED_POLL_SECONDS"])
    @pytest.mark.parametrize(
        "value", ["0", "-1", "86401", "nan", "inf", "ten", "1s", "1e9"]
    )
    def test_bad_seconds_rejected(self, name: str, value: str) -> None:
        """Zero, negative, too long and non-numeric durations are rejected."""
        assert rejection(**{name: value}).variable == name


class TestBooleans:
    @pytest.mark.parametrize("name", list(_BOOLEAN_FIELDS))
    @pytest.mark.parametrize("value", ["1", "true", "YES", "On"])
    def test_true_words_accepted(self, name: str, value: str) -> None:
        """1, true, yes and on (any case) mean true."""
        assert getattr(load(**{name: value}), _BOOLEAN_FIELDS[name]) is True

    @pytest.mark.parametrize("name", list(_BOOLEAN_FIELDS))
    @pytest.mark.parametrize("value", ["0", "false", "NO", "Off"])
    def test_false_words_accepted(self, name: str, value: str) -> None:
        """0, false, no and off (any case) mean false."""
        assert getattr(load(**{name: value}), _BOOLEAN_FIELDS[name]) is False

    @pytest.mark.parametrize("name", list(_BOOLEAN_FIELDS))
    @pytest.mark.parametrize("value", ["2", "y", "enabled", "true\nfalse"])
    def test_other_words_rejected(self, name: str, value: str) -> None:
        """Anything else raises ConfigError naming the variable."""
        assert rejection(**{name: value}).variable == name


class TestPaths:
    @pytest.mark.parametrize("name", ["CERT_DIR", "RUN_DIR"])
    def test_absolute_directory_accepted(self, name: str) -> None:
        """An absolute directory is used as given."""
        settings = load(**{name: "/srv/haproxy-1.2/certs@x"})
        assert getattr(settings, name.lower()) == Path("/srv/haproxy-1.2/certs@x")

    @pytest.mark.parametrize("name", ["CERT_DIR", "RUN_DIR"])
    def test_relative_directory_rejected(self, name: str) -> None:
        """A relative directory is rejected, because HAProxy may chdir."""
        error = rejection(**{name: "certs"})
        assert error.variable == name
        assert "absolute" in error.reason

    @pytest.mark.parametrize("name", ["CERT_DIR", "RUN_DIR", "HAPROXY_BIN"])
    @pytest.mark.parametrize("text", INJECTIONS)
    def test_unsafe_path_rejected(self, name: str, text: str) -> None:
        """White space, quotes, '#', '$' and backslashes are rejected."""
        assert rejection(**{name: f"/srv/{text}"}).variable == name

    def test_haproxy_bin_accepts_name(self) -> None:
        """HAPROXY_BIN may be a bare name looked up on PATH."""
        assert load(HAPROXY_BIN="haproxy-3.2").haproxy_bin == "haproxy-3.2"

    @pytest.mark.parametrize("name", ["HAPROXY_CONFIG_TEMPLATE", "ACME_CA_FILE"])
    def test_existing_file_accepted(self, name: str, tmp_path: Path) -> None:
        """An existing file is returned as an absolute path."""
        existing = tmp_path / "file.pem"
        existing.write_text("x")
        assert getattr(load(**{name: str(existing)}), _FILE_FIELDS[name]) == existing

    @pytest.mark.parametrize("name", ["HAPROXY_CONFIG_TEMPLATE", "ACME_CA_FILE"])
    def test_relative_file_made_absolute(
        self, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative file name is resolved against the working directory."""
        (tmp_path / "file.pem").write_text("x")
        monkeypatch.chdir(tmp_path)
        resolved = getattr(load(**{name: "file.pem"}), _FILE_FIELDS[name])
        assert resolved == tmp_path / "file.pem"

    @pytest.mark.parametrize("name", ["HAPROXY_CONFIG_TEMPLATE", "ACME_CA_FILE"])
    def test_relative_file_unsafe_cwd(
        self, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A working directory with a space cannot reach haproxy.cfg."""
        directory = tmp_path / "with space"
        directory.mkdir()
        (directory / "file.pem").write_text("x")
        monkeypatch.chdir(directory)
        error = rejection(**{name: "file.pem"})
        assert error.variable == name
        assert error.value == os.path.join(directory, "file.pem")

    @pytest.mark.parametrize("name", ["HAPROXY_CONFIG_TEMPLATE", "ACME_CA_FILE"])
    def test_missing_file_rejected(self, name: str, tmp_path: Path) -> None:
        """A file that does not exist is rejected."""
        error = rejection(**{name: str(tmp_path / "absent.pem")})
        assert error.variable == name
        assert error.reason == "file not found"

    @pytest.mark.parametrize("name", ["HAPROXY_CONFIG_TEMPLATE", "ACME_CA_FILE"])
    def test_directory_is_not_file(self, name: str, tmp_path: Path) -> None:
        """A directory is not accepted where a file is expected."""
        assert rejection(**{name: str(tmp_path)}).variable == name

    @pytest.mark.parametrize("name", ["HAPROXY_CONFIG_TEMPLATE", "ACME_CA_FILE"])
    @pytest.mark.parametrize("text", INJECTIONS)
    def test_unsafe_file_rejected(self, name: str, text: str, tmp_path: Path) -> None:
        """Unsafe characters are rejected even when the file exists."""
        (tmp_path / f"f{text}").write_text("x")
        assert rejection(**{name: str(tmp_path / f"f{text}")}).variable == name


class TestEndpoints:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("*:8080", Endpoint("*", 8080)),
            (":8080", Endpoint("", 8080)),
            ("127.0.0.1:8000", Endpoint("127.0.0.1", 8000)),
            ("0.0.0.0:1", Endpoint("0.0.0.0", 1)),
            ("[::]:8443", Endpoint("[::]", 8443)),
            ("[::1]:65535", Endpoint("[::1]", 65535)),
            ("[2001:db8::5]:8443", Endpoint("[2001:db8::5]", 8443)),
        ],
    )
    @pytest.mark.parametrize("name", ["HTTP_BIND", "HTTPS_BIND"])
    def test_bind_accepted(self, name: str, value: str, expected: Endpoint) -> None:
        """Binds take any-address, IPv4 and bracketed IPv6 forms."""
        assert getattr(load(**{name: value}), name.lower()) == expected

    def test_endpoint_text_keeps_brackets(self) -> None:
        """An IPv6 endpoint renders as HAProxy expects it."""
        assert str(load(HTTPS_BIND="[::1]:8443").https_bind) == "[::1]:8443"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("127.0.0.53:53", Endpoint("127.0.0.53", 53)),
            ("[::1]:53", Endpoint("[::1]", 53)),
        ],
    )
    def test_resolver_accepted(self, value: str, expected: Endpoint) -> None:
        """The resolver takes an IPv4 or bracketed IPv6 address and a port."""
        assert load(ACME_RESOLVER=value).resolver == expected

    @pytest.mark.parametrize("value", ["*:53", ":53", "dns.example.com:53"])
    def test_resolver_needs_address(self, value: str) -> None:
        """The resolver must be an IP address, not a wildcard or a name."""
        assert rejection(ACME_RESOLVER=value).variable == "ACME_RESOLVER"

    @pytest.mark.parametrize(
        "value",
        [
            "80",
            "*:0",
            "*:65536",
            "*:http",
            "*:-1",
            "*:8²",
            "*:٨٠",
            "127.0.0.1",
            "127.0.0.1:",
            "256.0.0.1:80",
            "localhost:80",
            "::1:80",
            "[::1:80",
            "::1]:80",
            "[::1]",
            "[fe80::1%eth0]:80",
            "[fe80::1%a\nglobal]:80",
            "[fe80::1%a b]:80",
            "[::1%${HOME}]:80",
            "[::1%a#b]:80",
            '[::1%"]:80',
            *(f"127.0.0.1:80{text}" for text in INJECTIONS),
            *(f"127.0.0.1{text}:80" for text in INJECTIONS),
        ],
    )
    @pytest.mark.parametrize("name", ["HTTP_BIND", "HTTPS_BIND", "ACME_RESOLVER"])
    def test_bad_endpoint_rejected(self, name: str, value: str) -> None:
        """Bad ports, host names, unbracketed IPv6 and zones are rejected."""
        assert rejection(**{name: value}).variable == name

    @pytest.mark.parametrize(
        ("http", "https"),
        [
            ("*:80", "*:80"),
            (":8080", ":8080"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::1]:80", "[0::1]:80"),
            ("*:80", "127.0.0.1:80"),
            ("127.0.0.1:80", ":80"),
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("[::1]:80", "[::]:80"),
            ("0.0.0.0:80", "[::1]:80"),
        ],
    )
    def test_overlapping_binds_rejected(self, http: str, https: str) -> None:
        """Binds on one port that share an address or a wildcard are refused."""
        error = rejection(HTTP_BIND=http, HTTPS_BIND=https)
        assert error.variable == "HTTPS_BIND"
        assert f"HTTP_BIND={http}" in error.reason

    @pytest.mark.parametrize(
        ("http", "https"),
        [
            ("*:80", "*:443"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("[::1]:8080", "127.0.0.1:8080"),
        ],
    )
    def test_separate_binds_accepted(self, http: str, https: str) -> None:
        """Different ports, or different concrete addresses, are accepted."""
        settings = load(HTTP_BIND=http, HTTPS_BIND=https)
        assert settings.http_bind != settings.https_bind

    def test_unbracketed_ipv6_hint(self) -> None:
        """An IPv6 address without brackets gets a hint with an example."""
        error = rejection(ACME_RESOLVER="2001:db8::1:53")
        assert "brackets" in error.reason
