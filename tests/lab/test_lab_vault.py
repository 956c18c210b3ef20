"""Tests of vault provisioning and seeding."""

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haproxy_acme_supervisor.lab.errors import VaultError
from haproxy_acme_supervisor.lab.vault import (
    VAULT_FILES,
    Vault,
    provision,
    write_seed,
)
from haproxy_acme_supervisor.pem import public_key_sha256


def file_mode(path: Path) -> int:
    """Return the permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Load every certificate of a PEM file."""
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture
def fresh_vault(tmp_path: Path) -> Vault:
    """A vault for two names in a new directory."""
    return provision(tmp_path / "vault", ["lab.local", "www.lab.local"])


class TestProvision:
    def test_files_created(self, fresh_vault: Vault) -> None:
        """Provisioning writes all five vault files."""
        assert fresh_vault.missing_files() == []

    @pytest.mark.parametrize("name", ["ca.key.pem", "vault.key.pem", "gateway.pem"])
    def test_key_files_private(self, fresh_vault: Vault, name: str) -> None:
        """Files that hold a private key are mode 0600."""
        assert file_mode(fresh_vault.directory / name) == 0o600

    def test_no_temporary_files_left(self, fresh_vault: Vault) -> None:
        """Atomic writes leave no temporary file behind."""
        names = sorted(path.name for path in fresh_vault.directory.iterdir())
        assert names == sorted(VAULT_FILES)

    def test_idempotent(self, fresh_vault: Vault) -> None:
        """A second provision keeps every existing file byte for byte."""
        before = {n: (fresh_vault.directory / n).read_bytes() for n in VAULT_FILES}
        again = provision(fresh_vault.directory, ["lab.local"])
        after = {n: (again.directory / n).read_bytes() for n in VAULT_FILES}
        assert again == fresh_vault
        assert after == before

    def test_incomplete_vault_rejected(self, fresh_vault: Vault) -> None:
        """A directory with only some vault files is not overwritten."""
        fresh_vault.vault_key.unlink()
        with pytest.raises(VaultError, match=r"vault\.key\.pem"):
            provision(fresh_vault.directory, ["lab.local"])

    def test_invalid_domain_rejected(self, tmp_path: Path) -> None:
        """A wildcard or malformed name raises ValueError."""
        with pytest.raises(ValueError, match="invalid DNS name"):
            provision(tmp_path / "vault", ["*.lab.local"])

    def test_load_missing_vault(self, tmp_path: Path) -> None:
        """Loading an empty directory raises VaultError naming the files."""
        with pytest.raises(VaultError, match=r"ca\.pem"):
            Vault.load(tmp_path)


class TestCertificates:
    def test_ca_is_ca(self, fresh_vault: Vault) -> None:
        """The lab CA is self-signed with CA:true."""
        ca = load_certificates(fresh_vault.ca_cert)[0]
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.value.ca is True
        assert ca.issuer == ca.subject
        assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)

    def test_leaf_chain(self, fresh_vault: Vault) -> None:
        """vault.pem is the leaf, signed by the CA, then the CA."""
        leaf, ca = load_certificates(fresh_vault.vault_cert)
        assert ca == load_certificates(fresh_vault.ca_cert)[0]
        leaf.verify_directly_issued_by(ca)

    def test_leaf_names_and_usage(self, fresh_vault: Vault) -> None:
        """The leaf carries the domains as SANs and the serverAuth EKU."""
        leaf = load_certificates(fresh_vault.vault_cert)[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        assert sans.value.get_values_for_type(x509.DNSName) == [
            "lab.local",
            "www.lab.local",
        ]
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage.value

    def test_leaf_lifetime(self, fresh_vault: Vault) -> None:
        """The leaf is valid for about 90 days."""
        leaf = load_certificates(fresh_vault.vault_cert)[0]
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert 89 <= lifetime.days <= 91

    def test_leaf_matches_vault_key(self, fresh_vault: Vault) -> None:
        """The leaf's public key is the vault key's."""
        leaf = load_certificates(fresh_vault.vault_cert)[0]
        assert public_key_sha256(leaf.public_key()) == public_key_sha256(
            fresh_vault.read_public_key()
        )

    def test_gateway_certificate_names(self, fresh_vault: Vault) -> None:
        """The gateway certificate has CN 127.0.0.1 and loopback SANs."""
        gateway = load_certificates(fresh_vault.gateway_pem)[0]
        sans = gateway.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        common_name = gateway.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert common_name[0].value == "127.0.0.1"
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(
            x509.IPAddress
        )
        assert ipaddress.ip_address("::1") in sans.get_values_for_type(x509.IPAddress)
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]

    def test_gateway_pem_has_key(self, fresh_vault: Vault) -> None:
        """gateway.pem contains the key of its certificate."""
        data = fresh_vault.gateway_pem.read_bytes()
        key = serialization.load_pem_private_key(data, None)
        certificate = x509.load_pem_x509_certificate(data)
        assert public_key_sha256(key.public_key()) == public_key_sha256(
            certificate.public_key()
        )


class TestSeed:
    def test_seed_key_first(self, fresh_vault: Vault, tmp_path: Path) -> None:
        """The seed starts with the vault key, then leaf and CA."""
        seed = tmp_path / "certlocker.acme.pem"
        write_seed(fresh_vault, seed)
        text = seed.read_text()
        assert text.startswith("-----BEGIN PRIVATE KEY-----")
        assert text.count("-----BEGIN CERTIFICATE-----") == 2

    def test_seed_private(self, fresh_vault: Vault, tmp_path: Path) -> None:
        """The seed is mode 0600."""
        seed = tmp_path / "certlocker.acme.pem"
        write_seed(fresh_vault, seed)
        assert file_mode(seed) == 0o600

    def test_seed_key_matches_leaf(self, fresh_vault: Vault, tmp_path: Path) -> None:
        """The seed's key is the key of its leaf."""
        seed = tmp_path / "certlocker.acme.pem"
        write_seed(fresh_vault, seed)
        key = serialization.load_pem_private_key(seed.read_bytes(), None)
        leaf = load_certificates(seed)[0]
        assert public_key_sha256(key.public_key()) == public_key_sha256(
            leaf.public_key()
        )
