"""Tests for rendering haproxy.cfg from the packaged or a custom template."""

import subprocess
from pathlib import Path

import pytest

from haproxy_acme_supervisor.bootcheck import prepare_cert_dir
from haproxy_acme_supervisor.config import Settings, load_settings
from haproxy_acme_supervisor.errors import ExitCode, TemplateError
from haproxy_acme_supervisor.template import (
    ACME_SECTION,
    default_template_path,
    render_config,
    template_context,
)

DOMAINS = "example.com,*.example.com"


def make_settings(tmp_path: Path, **overrides: str) -> Settings:
    """Return settings whose certificate and run directories are in tmp_path."""
    environ = {
        "ACME_DOMAINS": DOMAINS,
        "ACME_DIRECTORY": "https://acme.example.net/directory",
        "CERT_DIR": str(tmp_path / "certs"),
        "RUN_DIR": str(tmp_path / "run"),
        "HTTP_BIND": "127.0.0.1:8080",
        "HTTPS_BIND": "127.0.0.1:8443",
        **overrides,
    }
    return load_settings(environ)


def custom_template(tmp_path: Path, text: str) -> Path:
    """Write ``text`` as a template file and return its path."""
    path = tmp_path / "custom.cfg.j2"
    path.write_text(text)
    return path


def lines_of(config: str) -> list[str]:
    """Return the configuration's lines without surrounding white space."""
    return [line.strip() for line in config.splitlines()]


class TestDefaultTemplate:
    def test_template_file_exists(self) -> None:
        """The packaged template, or the checkout's copy, is found."""
        assert default_template_path().is_file()

    def test_header_names_template(self, tmp_path: Path) -> None:
        """The first line names the template that produced the file."""
        config = render_config(make_settings(tmp_path))
        first = config.splitlines()[0]
        assert (
            first
            == f"# Rendered by haproxy-acme-supervisor from {default_template_path()}."
        )

    def test_acme_section(self, tmp_path: Path) -> None:
        """The acme section carries directory, account key, map and reuse-key."""
        settings = make_settings(tmp_path)
        lines = lines_of(render_config(settings))
        assert f"acme {ACME_SECTION}" in lines
        assert "directory https://acme.example.net/directory" in lines
        assert f"account-key {settings.paths.account_key}" in lines
        assert "challenge HTTP-01" in lines
        assert "map virt@acme" in lines
        assert "reuse-key on" in lines

    def test_reuse_key_off(self, tmp_path: Path) -> None:
        """ACME_REUSE_KEY=0 renders 'reuse-key off'."""
        lines = lines_of(render_config(make_settings(tmp_path, ACME_REUSE_KEY="0")))
        assert "reuse-key off" in lines
        assert "reuse-key on" not in lines

    def test_ecdsa_curves(self, tmp_path: Path) -> None:
        """ECDSA renders the curve and no RSA size."""
        lines = lines_of(render_config(make_settings(tmp_path, ACME_CURVES="P-256")))
        assert "keytype ECDSA" in lines
        assert "curves P-256" in lines
        assert not any(line.startswith("bits ") for line in lines)

    def test_rsa_bits(self, tmp_path: Path) -> None:
        """RSA renders the key size and no curve."""
        settings = make_settings(tmp_path, ACME_KEYTYPE="rsa", ACME_BITS="3072")
        lines = lines_of(render_config(settings))
        assert "keytype RSA" in lines
        assert "bits 3072" in lines
        assert not any(line.startswith("curves ") for line in lines)

    def test_crt_store_load_line(self, tmp_path: Path) -> None:
        """The staging bundle is loaded with its alias, section and domains."""
        settings = make_settings(tmp_path)
        lines = lines_of(render_config(settings))
        spec = settings.certificates[0]
        assert f"crt-store {spec.store}" in lines
        expected = (
            f"load crt {settings.paths.staged} alias {spec.alias} "
            f'acme {ACME_SECTION} domains "example.com,*.example.com"'
        )
        assert expected in lines

    def test_tls_bind_serves_live_only(self, tmp_path: Path) -> None:
        """The TLS frontend loads live.pem and nothing else."""
        settings = make_settings(tmp_path)
        lines = lines_of(render_config(settings))
        tls_binds = [
            line for line in lines if line.startswith("bind ") and " ssl " in line
        ]
        assert tls_binds == [f"bind 127.0.0.1:8443 ssl crt {settings.paths.live}"]
        crt_lines = [line for line in lines if " crt " in line]
        assert len(crt_lines) == 2
        assert not any(str(settings.paths.bootstrap) in line for line in lines)

    def test_http_bind(self, tmp_path: Path) -> None:
        """The http-01 frontend binds HTTP_BIND."""
        lines = lines_of(render_config(make_settings(tmp_path)))
        assert "bind 127.0.0.1:8080" in lines

    def test_admin_socket(self, tmp_path: Path) -> None:
        """The admin socket is in RUN_DIR with mode 600."""
        settings = make_settings(tmp_path)
        lines = lines_of(render_config(settings))
        assert f"stats socket {settings.admin_socket} level admin mode 600" in lines

    def test_optional_lines_absent(self, tmp_path: Path) -> None:
        """Without contact, CA file, resolver or skip-verify, none is rendered."""
        config = render_config(make_settings(tmp_path))
        assert "contact " not in config
        assert "httpclient.ssl.ca-file" not in config
        assert "resolvers acme_resolvers" not in config
        assert "httpclient.ssl.verify none" not in config

    def test_optional_lines_present(self, tmp_path: Path) -> None:
        """Contact, CA file, resolver and skip-verify render their lines."""
        ca_file = tmp_path / "ca.pem"
        ca_file.write_text("x")
        settings = make_settings(
            tmp_path,
            ACME_CONTACT="mailto:admin@example.com",
            ACME_CA_FILE=str(ca_file),
            ACME_RESOLVER="[::1]:53",
            ACME_INSECURE_SKIP_VERIFY="1",
        )
        lines = lines_of(render_config(settings))
        assert "contact admin@example.com" in lines
        assert f"httpclient.ssl.ca-file {ca_file}" in lines
        assert "httpclient.resolvers.id acme_resolvers" in lines
        assert "nameserver acme_nameserver [::1]:53" in lines
        assert "httpclient.ssl.verify none" in lines

    def test_context_values_are_plain(self, tmp_path: Path) -> None:
        """The template context holds only strings, booleans, ints and lists."""
        settings = make_settings(tmp_path)
        context = template_context(settings, default_template_path())
        for name, value in context.items():
            assert isinstance(value, str | bool | int | list), name


class TestCustomTemplate:
    def test_custom_template_used(self, tmp_path: Path) -> None:
        """HAPROXY_CONFIG_TEMPLATE replaces the packaged template."""
        path = custom_template(tmp_path, "bind {{ https_bind }}\n")
        config = render_config(
            make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        )
        assert config == "bind 127.0.0.1:8443\n"

    def test_unknown_variable_names_template(self, tmp_path: Path) -> None:
        """A misspelt variable raises TemplateError naming the file."""
        path = custom_template(tmp_path, "global\n    bind {{ htps_bind }}\n")
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        with pytest.raises(TemplateError) as caught:
            render_config(settings)
        assert caught.value.path == path
        assert str(caught.value).startswith(f"{path}: ")
        assert "htps_bind" in caught.value.reason
        assert caught.value.exit_code == ExitCode.CONFIG_ERROR

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("{{ 1 / 0 }}\n", "ZeroDivisionError"),
            (
                "{% macro loop() %}{{ loop() }}{% endmacro %}{{ loop() }}\n",
                "RecursionError",
            ),
        ],
        ids=["division-by-zero", "recursion"],
    )
    def test_render_failure_names_template(
        self, tmp_path: Path, text: str, expected: str
    ) -> None:
        """An expression that fails while rendering is a TemplateError, not a bug."""
        path = custom_template(tmp_path, text)
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        with pytest.raises(TemplateError) as caught:
            render_config(settings)
        assert caught.value.path == path
        assert expected in caught.value.reason
        assert len(caught.value.reason) < 250

    def test_undefined_attribute_rejected(self, tmp_path: Path) -> None:
        """An unknown attribute of a known variable is an error too."""
        text = "{% for c in certificates %}{{ c.path }}{% endfor %}\n"
        path = custom_template(tmp_path, text)
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        with pytest.raises(TemplateError, match="undefined"):
            render_config(settings)

    def test_syntax_error_names_line(self, tmp_path: Path) -> None:
        """A syntax error names the template and the line number."""
        path = custom_template(tmp_path, "global\n\n{% if reuse_key %}\n    x\n")
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        with pytest.raises(TemplateError) as caught:
            render_config(settings)
        assert caught.value.path == path
        assert "syntax error on line" in caught.value.reason

    def test_syntax_error_line_number(self, tmp_path: Path) -> None:
        """The reported line is the one with the bad tag."""
        path = custom_template(tmp_path, "global\n    x\n    {{ 1 + }}\n")
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        with pytest.raises(TemplateError, match="syntax error on line 3"):
            render_config(settings)

    def test_include_reports_template(self, tmp_path: Path) -> None:
        """An include, which has no loader, raises TemplateError."""
        path = custom_template(tmp_path, '{% include "other.j2" %}\n')
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        with pytest.raises(TemplateError) as caught:
            render_config(settings)
        assert caught.value.path == path

    def test_unreadable_template(self, tmp_path: Path) -> None:
        """A template that is not UTF-8 raises TemplateError."""
        path = tmp_path / "latin1.cfg.j2"
        path.write_bytes(b"# caf\xe9\n")
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        with pytest.raises(TemplateError, match="cannot be read"):
            render_config(settings)

    def test_template_removed_after_load(self, tmp_path: Path) -> None:
        """A template deleted after settings were loaded raises TemplateError."""
        path = custom_template(tmp_path, "global\n")
        settings = make_settings(tmp_path, HAPROXY_CONFIG_TEMPLATE=str(path))
        path.unlink()
        with pytest.raises(TemplateError, match="cannot be read"):
            render_config(settings)


def haproxy_check(haproxy_bin: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``haproxy -c`` on ``config`` and return the finished process."""
    return subprocess.run(
        [str(haproxy_bin), "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.integration
class TestHAProxyCheck:
    @pytest.mark.parametrize(
        "overrides",
        [
            {},
            {
                "ACME_KEYTYPE": "RSA",
                "ACME_BITS": "4096",
                "ACME_CONTACT": "admin@example.com",
                "ACME_RESOLVER": "[::1]:53",
                "HTTP_BIND": "[::1]:8080",
                "HTTPS_BIND": ":8443",
                "ACME_INSECURE_SKIP_VERIFY": "1",
                "ACME_REUSE_KEY": "0",
            },
        ],
        ids=["defaults", "rsa-ipv6-contact"],
    )
    def test_rendered_config_valid(
        self, tmp_path: Path, haproxy_bin: Path, overrides: dict[str, str]
    ) -> None:
        """HAProxy 3.2 accepts the rendered default template."""
        settings = make_settings(
            tmp_path, CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0", **overrides
        )
        prepare_cert_dir(settings)
        settings.run_dir.mkdir()
        settings.rendered_config.write_text(render_config(settings))
        result = haproxy_check(haproxy_bin, settings.rendered_config)
        assert result.returncode == 0, result.stdout + result.stderr
