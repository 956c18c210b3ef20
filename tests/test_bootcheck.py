"""Tests for the certificate directory checks that run before HAProxy starts."""

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haproxy_acme_supervisor import bootcheck
from haproxy_acme_supervisor.bootcheck import (
    BOOTSTRAP_COMMON_NAME,
    PLACEHOLDER_COMMON_NAME,
    check_seeded,
    ensure_account_key,
    ensure_bootstrap,
    ensure_live,
    ensure_staged_placeholder,
    prepare_cert_dir,
)
from haproxy_acme_supervisor.config import CertPaths, Settings, load_settings
from haproxy_acme_supervisor.errors import CertFileError, ExitCode, SeededKeyError
from haproxy_acme_supervisor.pem import (
    dns_names,
    fingerprint,
    public_key_sha256,
    read_bundle,
    short_coordinate,
)

from .certificates import (
    SHORT_X_SCALAR,
    SHORT_Y_SCALAR,
    UNUSABLE_KEYS,
    Chain,
    bundle_pem,
    certificate_pem,
    full_length_key,
    key_pem,
    make_chain,
    new_key,
    self_signed_pair,
    short_coordinate_key,
    unusable_key,
)

DOMAINS = ("example.com", "www.example.com")


def make_settings(tmp_path: Path, **overrides: str) -> Settings:
    """Return settings whose certificate and run directories are in tmp_path."""
    environ = {
        "ACME_DOMAINS": ",".join(DOMAINS),
        "ACME_DIRECTORY": "https://acme.example.net/directory",
        "CERT_DIR": str(tmp_path / "certs"),
        "RUN_DIR": str(tmp_path / "run"),
        **overrides,
    }
    return load_settings(environ)


def mode_of(path: Path) -> int:
    """Return the permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def chain() -> Chain:
    """A CA-issued leaf for DOMAINS, shared by this module."""
    return make_chain(DOMAINS)


@pytest.fixture
def paths(tmp_path: Path) -> CertPaths:
    """An empty certificate directory."""
    directory = tmp_path / "certs"
    directory.mkdir()
    return CertPaths(directory)


class TestAccountKey:
    def test_created_when_missing(self, paths: CertPaths) -> None:
        """A missing account key is created as EC P-384 with mode 0600."""
        sha256 = ensure_account_key(paths.account_key)
        key = serialization.load_pem_private_key(
            paths.account_key.read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP384R1)
        assert short_coordinate(key) is None
        assert mode_of(paths.account_key) == 0o600
        assert sha256 == public_key_sha256(key)

    def test_existing_key_kept(self, paths: CertPaths) -> None:
        """An existing good key is returned unchanged."""
        key = ec.generate_private_key(ec.SECP384R1())
        while short_coordinate(key) is not None:
            key = ec.generate_private_key(ec.SECP384R1())
        paths.account_key.write_bytes(key_pem(key))
        paths.account_key.chmod(0o600)
        assert ensure_account_key(paths.account_key) == public_key_sha256(key)
        assert paths.account_key.read_bytes() == key_pem(key)

    def test_open_mode_restricted(self, paths: CertPaths) -> None:
        """An existing key readable by others is narrowed to 0600."""
        paths.account_key.write_bytes(key_pem(short_coordinate_key(5)))
        paths.account_key.chmod(0o644)
        ensure_account_key(paths.account_key)
        assert mode_of(paths.account_key) == 0o600

    def test_chmod_failure_tolerated(
        self, paths: CertPaths, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A key file this user cannot chmod is used as it is."""
        paths.account_key.write_bytes(key_pem(short_coordinate_key(5)))
        paths.account_key.chmod(0o640)

        def refuse_chmod(self: Path, mode: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(bootcheck.Path, "chmod", refuse_chmod)
        expected = public_key_sha256(short_coordinate_key(5))
        assert ensure_account_key(paths.account_key) == expected

    def test_not_a_key_rejected(self, paths: CertPaths, chain: Chain) -> None:
        """A file that is not a private key stops the start with code 65."""
        paths.account_key.write_bytes(certificate_pem(chain.leaf.certificate))
        with pytest.raises(CertFileError) as caught:
            ensure_account_key(paths.account_key)
        assert type(caught.value) is CertFileError
        assert caught.value.path == paths.account_key
        assert str(paths.account_key) in str(caught.value)
        assert caught.value.exit_code == ExitCode.INVALID_CERT_FILE
        assert caught.value.exit_code == 65

    def test_garbage_key_not_echoed(self, paths: CertPaths) -> None:
        """The error for an unreadable key does not quote the file."""
        paths.account_key.write_bytes(b"TOPSECRET not a key")
        with pytest.raises(CertFileError) as caught:
            ensure_account_key(paths.account_key)
        assert "TOPSECRET" not in str(caught.value)

    def test_encrypted_key_rejected(self, paths: CertPaths) -> None:
        """An encrypted account key is rejected."""
        encrypted = short_coordinate_key(5).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        paths.account_key.write_bytes(encrypted)
        with pytest.raises(CertFileError):
            ensure_account_key(paths.account_key)

    @pytest.mark.parametrize(
        ("scalar", "coordinate"), [(SHORT_X_SCALAR, "x"), (SHORT_Y_SCALAR, "y")]
    )
    def test_short_coordinate_rejected(
        self, paths: CertPaths, scalar: int, coordinate: str
    ) -> None:
        """A key with a short coordinate is rejected and left in place."""
        original = key_pem(short_coordinate_key(scalar))
        paths.account_key.write_bytes(original)
        with pytest.raises(CertFileError) as caught:
            ensure_account_key(paths.account_key)
        assert caught.value.path == paths.account_key
        assert caught.value.exit_code == 65
        assert f"{coordinate} coordinate" in caught.value.reason
        assert "move the file away" in caught.value.reason
        assert paths.account_key.read_bytes() == original

    def test_unreadable_key_rejected(self, paths: CertPaths) -> None:
        """A path that cannot be read (a directory) raises CertFileError."""
        paths.account_key.mkdir()
        with pytest.raises(CertFileError) as caught:
            ensure_account_key(paths.account_key)
        assert "cannot be read" in caught.value.reason


class TestBootstrapAndLive:
    def test_bootstrap_created(self, paths: CertPaths) -> None:
        """A missing bootstrap is a 0600 self-signed pair for the domains."""
        bundle = ensure_bootstrap(paths.bootstrap, DOMAINS)
        on_disk = read_bundle(paths.bootstrap)
        assert on_disk.leaf == bundle.leaf
        assert on_disk.leaf is not None
        assert dns_names(on_disk.leaf) == list(DOMAINS)
        assert BOOTSTRAP_COMMON_NAME in on_disk.leaf.subject.rfc4514_string()
        assert mode_of(paths.bootstrap) == 0o600

    def test_bootstrap_kept(self, paths: CertPaths) -> None:
        """An existing bootstrap is read, not replaced."""
        first = ensure_bootstrap(paths.bootstrap, DOMAINS)
        second = ensure_bootstrap(paths.bootstrap, DOMAINS)
        assert second.leaf == first.leaf

    def test_live_seeded_from_bootstrap(self, paths: CertPaths) -> None:
        """On first run live.pem is a 0600 copy of the bootstrap."""
        bootstrap = ensure_bootstrap(paths.bootstrap, DOMAINS)
        live = ensure_live(paths, bootstrap)
        assert live is bootstrap
        assert paths.live.read_bytes() == paths.bootstrap.read_bytes()
        assert mode_of(paths.live) == 0o600

    def test_existing_live_kept(self, paths: CertPaths, chain: Chain) -> None:
        """A valid live.pem from an earlier promotion is kept byte for byte."""
        paths.live.write_bytes(chain.bundle_pem())
        bootstrap = ensure_bootstrap(paths.bootstrap, DOMAINS)
        live = ensure_live(paths, bootstrap)
        assert live.leaf == chain.leaf.certificate
        assert paths.live.read_bytes() == chain.bundle_pem()

    @pytest.mark.parametrize(
        "content",
        [
            b"not a pem file",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            b"",
        ],
    )
    def test_corrupt_live_refused(self, paths: CertPaths, content: bytes) -> None:
        """A corrupt live.pem stops the start and stays untouched."""
        paths.live.write_bytes(content)
        bootstrap = ensure_bootstrap(paths.bootstrap, DOMAINS)
        with pytest.raises(CertFileError) as caught:
            ensure_live(paths, bootstrap)
        assert caught.value.path == paths.live
        assert caught.value.exit_code == 65
        assert paths.live.read_bytes() == content

    def test_truncated_live_refused(self, paths: CertPaths, chain: Chain) -> None:
        """A live.pem cut inside its chain certificate is refused."""
        content = chain.bundle_pem()[:-200]
        paths.live.write_bytes(content)
        bootstrap = ensure_bootstrap(paths.bootstrap, DOMAINS)
        with pytest.raises(CertFileError):
            ensure_live(paths, bootstrap)
        assert paths.live.read_bytes() == content

    def test_live_without_key_refused(self, paths: CertPaths, chain: Chain) -> None:
        """A live.pem with only certificates is refused."""
        paths.live.write_bytes(certificate_pem(chain.leaf.certificate))
        bootstrap = ensure_bootstrap(paths.bootstrap, DOMAINS)
        with pytest.raises(CertFileError, match="private key and a certificate"):
            ensure_live(paths, bootstrap)

    def test_live_key_mismatch_refused(self, paths: CertPaths, chain: Chain) -> None:
        """A live.pem whose key is not the certificate's is refused."""
        paths.live.write_bytes(bundle_pem(new_key(), chain.leaf.certificate))
        bootstrap = ensure_bootstrap(paths.bootstrap, DOMAINS)
        with pytest.raises(CertFileError, match="does not match"):
            ensure_live(paths, bootstrap)

    def test_corrupt_bootstrap_refused(self, paths: CertPaths) -> None:
        """A corrupt bootstrap stops the start and stays untouched."""
        paths.bootstrap.write_bytes(b"junk")
        with pytest.raises(CertFileError) as caught:
            ensure_bootstrap(paths.bootstrap, DOMAINS)
        assert caught.value.path == paths.bootstrap
        assert paths.bootstrap.read_bytes() == b"junk"


class TestCheckSeeded:
    def write_seed(self, paths: CertPaths, data: bytes) -> Path:
        """Write ``data`` as the seeded staging file and return its path."""
        paths.staged.write_bytes(data)
        return paths.staged

    def test_good_seed_accepted(
        self,
        paths: CertPaths,
        chain: Chain,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A matching key and certificate pass and print the key hash."""
        path = self.write_seed(paths, chain.bundle_pem())
        sha256 = check_seeded(path)
        assert sha256 == public_key_sha256(chain.leaf.key)
        output = capsys.readouterr().out
        assert f"ACME reusable key public sha256: {sha256}\n" in output

    def test_seed_mode_restricted(self, paths: CertPaths, chain: Chain) -> None:
        """A seeded file readable by others is narrowed to 0600."""
        path = self.write_seed(paths, chain.bundle_pem())
        path.chmod(0o644)
        check_seeded(path)
        assert mode_of(path) == 0o600

    def test_missing_seed_rejected(self, paths: CertPaths) -> None:
        """A missing seeded file exits with code 66 and names the fix."""
        with pytest.raises(SeededKeyError) as caught:
            check_seeded(paths.staged)
        assert caught.value.path == paths.staged
        assert caught.value.exit_code == ExitCode.SEEDED_KEY_MISMATCH
        assert caught.value.exit_code == 66
        assert "missing" in caught.value.reason
        assert "CERTLOCKER_ACME_REQUIRE_SEEDED_KEY=0" in caught.value.reason

    def test_seed_without_key_rejected(self, paths: CertPaths, chain: Chain) -> None:
        """A seeded file with no private key is rejected."""
        path = self.write_seed(paths, certificate_pem(chain.leaf.certificate))
        with pytest.raises(SeededKeyError, match="has no private key"):
            check_seeded(path)

    def test_seed_without_certificate_rejected(
        self, paths: CertPaths, chain: Chain
    ) -> None:
        """A seeded file with no certificate is rejected."""
        path = self.write_seed(paths, key_pem(chain.leaf.key))
        with pytest.raises(SeededKeyError, match="has no certificate"):
            check_seeded(path)

    def test_unparsable_seed_rejected(self, paths: CertPaths) -> None:
        """A seeded file with a broken block is rejected without its bytes."""
        path = self.write_seed(
            paths,
            b"-----BEGIN PRIVATE KEY-----\nTOPSECRET\n-----END PRIVATE KEY-----\n",
        )
        with pytest.raises(SeededKeyError) as caught:
            check_seeded(path)
        assert caught.value.exit_code == 66
        assert "TOPSECRET" not in str(caught.value)

    def test_mismatched_seed_rejected(
        self,
        paths: CertPaths,
        chain: Chain,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A key that is not the certificate's names both hashes and the fix."""
        other_key = new_key()
        content = bundle_pem(other_key, chain.leaf.certificate)
        path = self.write_seed(paths, content)
        with pytest.raises(SeededKeyError) as caught:
            check_seeded(path)
        message = str(caught.value)
        assert caught.value.exit_code == 66
        assert public_key_sha256(other_key) in message
        assert public_key_sha256(chain.leaf.key) in message
        assert "seed it with the private key the CA's vault stores" in message
        assert str(path) in message
        assert "-----BEGIN" not in message
        assert "ACME reusable key" not in capsys.readouterr().out
        assert path.read_bytes() == content

    def test_message_has_no_key_text(self, paths: CertPaths, chain: Chain) -> None:
        """No base64 line of the seeded file appears in the error."""
        content = bundle_pem(new_key(), chain.leaf.certificate)
        path = self.write_seed(paths, content)
        with pytest.raises(SeededKeyError) as caught:
            check_seeded(path)
        for line in content.splitlines():
            if not line.startswith(b"-----"):
                assert line.decode() not in str(caught.value)


class TestPlaceholder:
    def test_missing_gets_placeholder(self, paths: CertPaths) -> None:
        """Without a staging file a short-lived self-signed pair is written."""
        sha256 = ensure_staged_placeholder(paths.staged, DOMAINS)
        bundle = read_bundle(paths.staged)
        assert bundle.key is not None
        assert bundle.leaf is not None
        assert sha256 == fingerprint(bundle.leaf)
        assert PLACEHOLDER_COMMON_NAME in bundle.leaf.subject.rfc4514_string()
        assert dns_names(bundle.leaf) == list(DOMAINS)
        assert mode_of(paths.staged) == 0o600

    def test_existing_left_untouched(self, paths: CertPaths) -> None:
        """An existing staging file is neither checked nor changed."""
        paths.staged.write_bytes(b"anything at all")
        assert ensure_staged_placeholder(paths.staged, DOMAINS) is None
        assert paths.staged.read_bytes() == b"anything at all"


class TestPrepareCertDir:
    def test_first_run_lab_mode(self, tmp_path: Path) -> None:
        """Lab mode creates every file in a new directory."""
        settings = make_settings(tmp_path, CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0")
        report = prepare_cert_dir(settings)
        paths = settings.paths
        assert mode_of(paths.cert_dir) == 0o700
        for path in (paths.account_key, paths.bootstrap, paths.live, paths.staged):
            assert mode_of(path) == 0o600
        assert report.live_fingerprint == report.bootstrap_fingerprint
        assert report.seeded_key_sha256 is None
        assert report.placeholder_fingerprint is not None

    def test_second_run_keeps_files(self, tmp_path: Path) -> None:
        """A second run reads every file and rewrites none."""
        settings = make_settings(tmp_path, CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0")
        first = prepare_cert_dir(settings)
        paths = settings.paths
        names = (paths.account_key, paths.bootstrap, paths.live, paths.staged)
        before = {path: path.read_bytes() for path in names}
        second = prepare_cert_dir(settings)
        for path in names:
            assert path.read_bytes() == before[path]
        assert second.account_key_sha256 == first.account_key_sha256
        assert second.live_fingerprint == first.live_fingerprint
        assert second.placeholder_fingerprint is None

    def test_seeded_mode_checks_seed(
        self, tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With a seeded key required, a good seed is checked and reported."""
        settings = make_settings(tmp_path)
        settings.paths.cert_dir.mkdir()
        settings.paths.staged.write_bytes(chain.bundle_pem())
        report = prepare_cert_dir(settings)
        assert report.seeded_key_sha256 == public_key_sha256(chain.leaf.key)
        assert report.placeholder_fingerprint is None
        assert "ACME reusable key public sha256: " in capsys.readouterr().out

    def test_seeded_mode_missing_seed(self, tmp_path: Path) -> None:
        """With a seeded key required, a missing seed stops with code 66."""
        settings = make_settings(tmp_path)
        with pytest.raises(SeededKeyError) as caught:
            prepare_cert_dir(settings)
        assert caught.value.exit_code == 66
        assert not settings.paths.staged.exists()

    def test_unwritable_directory_rejected(self, tmp_path: Path) -> None:
        """A certificate directory path blocked by a file raises CertFileError."""
        (tmp_path / "certs").write_text("a file, not a directory")
        settings = make_settings(tmp_path, CERTLOCKER_ACME_REQUIRE_SEEDED_KEY="0")
        with pytest.raises(CertFileError) as caught:
            prepare_cert_dir(settings)
        assert caught.value.path == settings.paths.cert_dir


def check_live(paths: CertPaths) -> object:
    """Run the live.pem check after creating the bootstrap it may copy."""
    return ensure_live(paths, ensure_bootstrap(paths.bootstrap, DOMAINS))


# Each file the boot checks read, with the call that reads it and the error
# class it raises.
CHECKS: dict[str, tuple[Callable[[CertPaths], object], type[CertFileError]]] = {
    "account_key": (lambda p: ensure_account_key(p.account_key), CertFileError),
    "bootstrap": (lambda p: ensure_bootstrap(p.bootstrap, DOMAINS), CertFileError),
    "live": (check_live, CertFileError),
    "staged": (lambda p: check_seeded(p.staged), SeededKeyError),
}
PLACEHOLDER_CHECK = (
    lambda p: ensure_staged_placeholder(p.staged, DOMAINS),
    CertFileError,
)


def raised_error(
    paths: CertPaths, name: str, placeholder: bool = False
) -> CertFileError:
    """Run the check for file ``name`` and return the error it raises."""
    check, error = PLACEHOLDER_CHECK if placeholder else CHECKS[name]
    with pytest.raises(error) as caught:
        check(paths)
    assert type(caught.value) is error
    return caught.value


class TestSpecialFiles:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("name", list(CHECKS))
    def test_fifo_refused(self, paths: CertPaths, name: str) -> None:
        """A FIFO is refused at once, naming the file, and left in place."""
        path: Path = getattr(paths, name)
        os.mkfifo(path)
        error = raised_error(paths, name)
        assert error.path == path
        assert error.reason == "cannot be read: is a FIFO, not a regular file"
        assert stat.S_ISFIFO(path.lstat().st_mode)

    @pytest.mark.timeout(10)
    def test_fifo_placeholder_refused(self, paths: CertPaths) -> None:
        """In lab mode a FIFO staging file is refused, not left for HAProxy."""
        os.mkfifo(paths.staged)
        assert "FIFO" in raised_error(paths, "staged", placeholder=True).reason

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("name", list(CHECKS))
    def test_link_to_device_refused(self, paths: CertPaths, name: str) -> None:
        """A link to /dev/zero is refused instead of read without end."""
        path: Path = getattr(paths, name)
        path.symlink_to("/dev/zero")
        assert "character device" in raised_error(paths, name).reason

    @pytest.mark.parametrize("name", list(CHECKS))
    def test_oversized_file_refused(self, paths: CertPaths, name: str) -> None:
        """A file over 1 MiB is refused by size."""
        path: Path = getattr(paths, name)
        path.write_bytes(b"x" * (1024 * 1024 + 1))
        assert "larger than" in raised_error(paths, name).reason

    @pytest.mark.parametrize("name", list(CHECKS))
    def test_dangling_link_refused(self, paths: CertPaths, name: str) -> None:
        """A link to a missing file is an error, never replaced by a new file."""
        path: Path = getattr(paths, name)
        path.symlink_to(paths.cert_dir / "gone.pem")
        error = raised_error(paths, name)
        assert error.path == path
        assert error.reason.startswith("is a symbolic link to a missing file")
        assert path.is_symlink()
        assert not (paths.cert_dir / "gone.pem").exists()

    def test_dangling_placeholder_link_refused(self, paths: CertPaths) -> None:
        """In lab mode a dangling staging link is refused, not replaced."""
        paths.staged.symlink_to(paths.cert_dir / "gone.pem")
        error = raised_error(paths, "staged", placeholder=True)
        assert "symbolic link to a missing file" in error.reason

    def test_looping_link_refused(self, paths: CertPaths) -> None:
        """A link that points to itself is an error naming the file."""
        paths.live.symlink_to(paths.live)
        error = raised_error(paths, "live")
        assert error.reason.startswith("is a symbolic link that cannot be followed")

    def test_linked_secret_read(self, paths: CertPaths, chain: Chain) -> None:
        """A seed that is a link to a regular file, as Kubernetes mounts, passes."""
        target = paths.cert_dir / "mounted.pem"
        target.write_bytes(chain.bundle_pem())
        paths.staged.symlink_to(target)
        assert check_seeded(paths.staged) == public_key_sha256(chain.leaf.key)

    def test_error_is_one_line(self, paths: CertPaths) -> None:
        """The message names the file on one line."""
        paths.live.symlink_to(paths.cert_dir / "gone.pem")
        message = str(raised_error(paths, "live"))
        assert message.startswith(f"{paths.live}: ")
        assert "\n" not in message


class TestKeyTypes:
    @pytest.mark.parametrize("description", UNUSABLE_KEYS)
    def test_account_key_type_refused(self, paths: CertPaths, description: str) -> None:
        """An account key HAProxy cannot sign with is refused and kept."""
        content = key_pem(unusable_key(description))
        paths.account_key.write_bytes(content)
        error = raised_error(paths, "account_key")
        assert f"the key is {description};" in error.reason
        assert "RSA of 2048 bits or more" in error.reason
        assert paths.account_key.read_bytes() == content

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param(full_length_key(ec.SECP256R1()), id="P-256"),
            pytest.param(full_length_key(ec.SECP521R1()), id="P-521"),
        ],
    )
    def test_other_nist_account_keys_accepted(
        self, paths: CertPaths, key: ec.EllipticCurvePrivateKey
    ) -> None:
        """EC account keys on P-256 and P-521 pass."""
        paths.account_key.write_bytes(key_pem(key))
        assert ensure_account_key(paths.account_key) == public_key_sha256(key)

    @pytest.mark.parametrize("name", ["bootstrap", "live", "staged"])
    @pytest.mark.parametrize("description", UNUSABLE_KEYS)
    def test_pair_key_type_refused(
        self, paths: CertPaths, name: str, description: str
    ) -> None:
        """A key and certificate pair with an unusable key is refused."""
        path: Path = getattr(paths, name)
        path.write_bytes(self_signed_pair(unusable_key(description), DOMAINS))
        error = raised_error(paths, name)
        assert f"the key is {description};" in error.reason
        assert "EC on P-256, P-384 or P-521" in error.reason
