"""Tests for PEM parsing, key hashes, name matching, key generation and writes."""

import datetime
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from haproxy_acme_supervisor import pem
from haproxy_acme_supervisor.pem import (
    PemBundle,
    PemError,
    PemFileError,
    atomic_write,
    covers,
    dns_names,
    fingerprint,
    generate_account_key,
    is_self_signed,
    make_self_signed,
    parse_bundle,
    private_key_pem,
    public_key_sha256,
    read_bundle,
    read_pem_file,
    serial_hex,
    short_coordinate,
    unsupported_key,
)

from .certificates import (
    NOW,
    SHORT_X_SCALAR,
    SHORT_Y_SCALAR,
    UNUSABLE_KEYS,
    Chain,
    certificate_pem,
    key_pem,
    make_chain,
    new_key,
    short_coordinate_key,
    unusable_key,
)

EC_PARAMETERS = (
    b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
)


def block(label: bytes, body: bytes) -> bytes:
    """Wrap ``body`` in BEGIN and END lines for ``label``."""
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, body, label)


@pytest.fixture(scope="module")
def chain() -> Chain:
    """A root, intermediate and leaf for example.com, shared by this module."""
    return make_chain(["example.com", "www.example.com"])


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """An RSA 2048 key, shared by this module because it is slow to make."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TestParseBundle:
    def test_key_then_certificates(self, chain: Chain) -> None:
        """Key first, then leaf and chain, parses in order."""
        bundle = parse_bundle(chain.bundle_pem())
        assert bundle.key is not None
        assert public_key_sha256(bundle.key) == public_key_sha256(chain.leaf.key)
        assert bundle.leaf == chain.leaf.certificate
        assert bundle.chain == (chain.intermediate.certificate,)

    def test_key_last(self, chain: Chain) -> None:
        """A key after the certificates is found as well."""
        data = certificate_pem(chain.leaf.certificate) + key_pem(chain.leaf.key)
        bundle = parse_bundle(data)
        assert bundle.key is not None
        assert bundle.leaf == chain.leaf.certificate

    def test_crlf_line_ends(self, chain: Chain) -> None:
        """CRLF line ends parse like LF."""
        data = chain.bundle_pem().replace(b"\n", b"\r\n")
        bundle = parse_bundle(data)
        assert bundle.key is not None
        assert bundle.certificates == (
            chain.leaf.certificate,
            chain.intermediate.certificate,
        )

    @pytest.mark.parametrize(
        "private_format",
        [
            serialization.PrivateFormat.PKCS8,
            serialization.PrivateFormat.TraditionalOpenSSL,
        ],
    )
    def test_key_formats(
        self, chain: Chain, private_format: serialization.PrivateFormat
    ) -> None:
        """PKCS#8 and traditional 'EC PRIVATE KEY' blocks are both keys."""
        key_text = chain.leaf.key.private_bytes(
            serialization.Encoding.PEM, private_format, serialization.NoEncryption()
        )
        bundle = parse_bundle(key_text + certificate_pem(chain.leaf.certificate))
        assert bundle.key is not None

    def test_rsa_traditional_key(self, rsa_key: rsa.RSAPrivateKey) -> None:
        """An 'RSA PRIVATE KEY' block is a key."""
        key_text = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        assert isinstance(parse_bundle(key_text).key, rsa.RSAPrivateKey)

    def test_ec_parameters_ignored(self, chain: Chain) -> None:
        """An 'EC PARAMETERS' block, as openssl ecparam writes, is skipped."""
        bundle = parse_bundle(EC_PARAMETERS + chain.bundle_pem())
        assert bundle.key is not None
        assert len(bundle.certificates) == 2

    def test_text_between_blocks_ignored(self, chain: Chain) -> None:
        """Explanatory text, as openssl pkcs12 writes, is skipped."""
        data = (
            b"Bag Attributes\n    localKeyID: 01\n"
            + key_pem(chain.leaf.key)
            + b"subject=CN=example.com\n"
            + certificate_pem(chain.leaf.certificate)
        )
        bundle = parse_bundle(data)
        assert bundle.key is not None
        assert bundle.leaf == chain.leaf.certificate

    def test_empty_input_empty_bundle(self) -> None:
        """No PEM block gives a bundle without key or certificates."""
        bundle = parse_bundle(b"")
        assert bundle.key is None
        assert bundle.leaf is None
        assert bundle.chain == ()

    def test_two_keys_rejected(self, chain: Chain) -> None:
        """More than one private key is rejected."""
        data = key_pem(chain.leaf.key) + key_pem(new_key())
        with pytest.raises(PemError, match="more than one private key"):
            parse_bundle(data + certificate_pem(chain.leaf.certificate))

    def test_pkcs8_encrypted_key_rejected(self, chain: Chain) -> None:
        """An 'ENCRYPTED PRIVATE KEY' block is reported as encrypted."""
        key_text = chain.leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        with pytest.raises(PemError, match="encrypted"):
            parse_bundle(key_text)

    def test_traditional_encrypted_key_rejected(self, chain: Chain) -> None:
        """A 'Proc-Type: 4,ENCRYPTED' EC key is reported as encrypted."""
        key_text = chain.leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"secret"),
        )
        with pytest.raises(PemError, match="encrypted"):
            parse_bundle(key_text)

    def test_encrypted_and_plain_keys(self, chain: Chain) -> None:
        """A plain key next to an encrypted one still counts as two keys."""
        encrypted = new_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        with pytest.raises(PemError, match="more than one private key"):
            parse_bundle(key_pem(chain.leaf.key) + encrypted)

    def test_garbage_certificate_rejected(self) -> None:
        """A CERTIFICATE block that does not decode is rejected."""
        data = block(b"CERTIFICATE", b"TOPSECRETBYTES")
        with pytest.raises(PemError) as caught:
            parse_bundle(data)
        assert "certificate" in str(caught.value)
        assert "TOPSECRET" not in str(caught.value)

    def test_garbage_key_rejected(self) -> None:
        """A PRIVATE KEY block that does not decode is rejected."""
        data = block(b"PRIVATE KEY", b"TOPSECRETBYTES")
        with pytest.raises(PemError) as caught:
            parse_bundle(data)
        assert "private key" in str(caught.value)
        assert "TOPSECRET" not in str(caught.value)

    def test_corrupt_key_hides_bytes(self, chain: Chain) -> None:
        """A damaged real key is rejected without echoing its base64."""
        text = key_pem(chain.leaf.key)
        lines = text.splitlines(keepends=True)
        middle = lines[2]
        damaged = b"".join([*lines[:2], middle[:-5] + b"!!!!\n", *lines[3:]])
        with pytest.raises(PemError) as caught:
            parse_bundle(damaged)
        for line in lines[1:-1]:
            assert line.strip().decode() not in str(caught.value)

    def test_unexpected_block_rejected(self) -> None:
        """A block that is neither key, certificate nor parameters is rejected."""
        data = block(b"CERTIFICATE REQUEST", b"AAAA")
        with pytest.raises(PemError, match="unexpected PEM block"):
            parse_bundle(data)

    def test_truncated_block_rejected(self, chain: Chain) -> None:
        """A file cut inside its last block is rejected, not shortened."""
        data = chain.bundle_pem()
        with pytest.raises(PemError, match="without a matching END"):
            parse_bundle(data[: len(data) - 100])

    def test_begin_without_end_rejected(self, chain: Chain) -> None:
        """A BEGIN line before complete blocks is rejected."""
        data = b"-----BEGIN CERTIFICATE-----\nAAAA\n" + chain.bundle_pem()
        with pytest.raises(PemError):
            parse_bundle(data)

    def test_read_bundle_from_file(self, chain: Chain, tmp_path: Path) -> None:
        """read_bundle parses a file's contents."""
        path = tmp_path / "bundle.pem"
        path.write_bytes(chain.bundle_pem())
        assert read_bundle(path).leaf == chain.leaf.certificate

    def test_read_bundle_missing_file(self, tmp_path: Path) -> None:
        """A missing file raises OSError, not PemError."""
        with pytest.raises(FileNotFoundError):
            read_bundle(tmp_path / "absent.pem")


class TestReadPemFile:
    def test_regular_file_read(self, tmp_path: Path) -> None:
        """A regular file's bytes are returned."""
        path = tmp_path / "file.pem"
        path.write_bytes(b"content")
        assert read_pem_file(path) == b"content"

    def test_symlink_to_regular_file_followed(self, tmp_path: Path) -> None:
        """A link to a regular file, as Kubernetes mounts secrets, is read."""
        target = tmp_path / "target.pem"
        target.write_bytes(b"content")
        link = tmp_path / "link.pem"
        link.symlink_to(target)
        assert read_pem_file(link) == b"content"

    def test_fifo_refused_without_blocking(self, tmp_path: Path) -> None:
        """A FIFO with no writer is refused at once instead of blocking."""
        path = tmp_path / "fifo.pem"
        os.mkfifo(path)
        with pytest.raises(PemFileError) as caught:
            read_pem_file(path)
        assert caught.value.strerror == "is a FIFO, not a regular file"

    def test_device_refused(self, tmp_path: Path) -> None:
        """A link to /dev/zero is refused instead of read without end."""
        link = tmp_path / "zero.pem"
        link.symlink_to("/dev/zero")
        with pytest.raises(PemFileError) as caught:
            read_pem_file(link)
        assert caught.value.strerror == "is a character device, not a regular file"

    def test_fifo_swapped_in_after_stat_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A FIFO that replaces the file between stat and open does not block."""
        regular = tmp_path / "regular.pem"
        regular.write_bytes(b"content")
        regular_status = os.stat(regular)
        fifo = tmp_path / "fifo.pem"
        os.mkfifo(fifo)
        monkeypatch.setattr(pem.os, "stat", lambda path: regular_status)
        with pytest.raises(PemFileError, match="FIFO"):
            read_pem_file(fifo)

    def test_directory_refused(self, tmp_path: Path) -> None:
        """A directory is refused as not a regular file."""
        with pytest.raises(PemFileError, match="is a directory"):
            read_pem_file(tmp_path)

    def test_over_limit_refused(self, tmp_path: Path) -> None:
        """A file larger than the limit is refused."""
        path = tmp_path / "big.pem"
        path.write_bytes(b"x" * 11)
        with pytest.raises(PemFileError) as caught:
            read_pem_file(path, limit=10)
        assert caught.value.strerror == "larger than 10 bytes"

    def test_file_at_limit_read(self, tmp_path: Path) -> None:
        """A file of exactly the limit is read whole."""
        path = tmp_path / "exact.pem"
        path.write_bytes(b"x" * 10)
        assert read_pem_file(path, limit=10) == b"x" * 10

    def test_default_limit_is_one_mebibyte(self, tmp_path: Path) -> None:
        """Without a limit argument, files over 1 MiB are refused."""
        path = tmp_path / "big.pem"
        path.write_bytes(b"x" * (1024 * 1024 + 1))
        with pytest.raises(PemFileError):
            read_pem_file(path)

    def test_error_is_an_os_error(self, tmp_path: Path) -> None:
        """Callers that handle OSError also handle a refused file."""
        with pytest.raises(OSError):
            read_pem_file(tmp_path)

    def test_dangling_symlink_is_missing(self, tmp_path: Path) -> None:
        """A link to a missing file raises FileNotFoundError."""
        link = tmp_path / "link.pem"
        link.symlink_to(tmp_path / "absent.pem")
        with pytest.raises(FileNotFoundError):
            read_pem_file(link)

    def test_read_bundle_refuses_fifo(self, tmp_path: Path) -> None:
        """read_bundle goes through the same checks."""
        path = tmp_path / "fifo.pem"
        os.mkfifo(path)
        with pytest.raises(PemFileError):
            read_bundle(path)


class TestToPem:
    def test_round_trip(self, chain: Chain) -> None:
        """to_pem writes key, leaf and chain, which parse back the same."""
        bundle = parse_bundle(chain.bundle_pem())
        again = parse_bundle(bundle.to_pem())
        assert again.certificates == bundle.certificates
        assert again.key is not None
        assert public_key_sha256(again.key) == public_key_sha256(chain.leaf.key)

    def test_key_written_first(self, chain: Chain) -> None:
        """The key comes first, as in HAProxy's 'dump ssl cert' output."""
        text = parse_bundle(chain.bundle_pem()).to_pem()
        assert text.startswith(b"-----BEGIN PRIVATE KEY-----\n")

    def test_without_key(self, chain: Chain) -> None:
        """A bundle without key writes only certificates."""
        text = PemBundle(None, (chain.leaf.certificate,)).to_pem()
        assert b"PRIVATE KEY" not in text


class TestHashes:
    def test_key_and_certificate_agree(self, chain: Chain) -> None:
        """A private key and its certificate have the same public-key hash."""
        from_key = public_key_sha256(chain.leaf.key)
        from_certificate = public_key_sha256(chain.leaf.certificate.public_key())
        assert from_key == from_certificate

    def test_public_key_accepted(self, chain: Chain) -> None:
        """The hash of a public key equals that of its private key."""
        key = chain.leaf.key
        assert public_key_sha256(key.public_key()) == public_key_sha256(key)

    def test_other_key_differs(self, chain: Chain) -> None:
        """Different keys have different hashes."""
        assert public_key_sha256(chain.leaf.key) != public_key_sha256(new_key())

    def test_hash_is_hex_sha256(self, chain: Chain) -> None:
        """The hash is 64 lower-case hex digits."""
        value = public_key_sha256(chain.leaf.key)
        assert len(value) == 64
        assert set(value) <= set("0123456789abcdef")

    def test_fingerprint_is_certificate_sha256(self, chain: Chain) -> None:
        """fingerprint matches the SHA-256 of the DER certificate."""
        der = chain.leaf.certificate.public_bytes(serialization.Encoding.DER)
        assert fingerprint(chain.leaf.certificate) == hashlib.sha256(der).hexdigest()

    def test_serial_upper_hex(self, chain: Chain) -> None:
        """serial_hex is upper-case hex without prefix."""
        certificate = chain.leaf.certificate
        assert serial_hex(certificate) == format(certificate.serial_number, "X")


class TestDnsNames:
    def test_lower_cased(self) -> None:
        """SAN DNS names are returned lower-cased."""
        bundle = make_self_signed(
            "x", ["Example.COM"], valid_for=datetime.timedelta(days=1)
        )
        assert bundle.leaf is not None
        assert dns_names(bundle.leaf) == ["example.com"]

    def test_no_san_extension(self) -> None:
        """A certificate without SAN has no names."""
        bundle = make_self_signed("x", [], valid_for=datetime.timedelta(days=1))
        assert bundle.leaf is not None
        assert dns_names(bundle.leaf) == []


class TestCovers:
    @pytest.mark.parametrize(
        ("names", "domain"),
        [
            (["example.com"], "example.com"),
            (["example.com"], "EXAMPLE.com"),
            (["EXAMPLE.com"], "example.com"),
            (["a.example.com", "example.com"], "example.com"),
            (["*.example.com"], "a.example.com"),
            (["*.example.com"], "www.example.com"),
            (["*.example.com"], "*.example.com"),
        ],
    )
    def test_covered(self, names: list[str], domain: str) -> None:
        """Exact names and one-label wildcard matches cover the domain."""
        assert covers(names, domain)

    @pytest.mark.parametrize(
        ("names", "domain"),
        [
            ([], "example.com"),
            (["example.com"], "www.example.com"),
            (["*.example.com"], "example.com"),
            (["*.example.com"], "a.b.example.com"),
            (["*.example.com"], ".example.com"),
            (["*.example.com"], "a.example.org"),
            (["*.example.com"], "aexample.com"),
            (["a.example.com"], "*.example.com"),
            (["*.a.example.com"], "*.example.com"),
            (["*.example.com"], "*.a.example.com"),
            (["a*.example.com"], "ab.example.com"),
            (["*"], "example.com"),
        ],
    )
    def test_not_covered(self, names: list[str], domain: str) -> None:
        """Wildcards match one label only and never the bare parent."""
        assert not covers(names, domain)


class TestAccountKey:
    def test_generated_key_is_p384(self) -> None:
        """generate_account_key returns an EC P-384 key."""
        key = generate_account_key()
        assert isinstance(key.curve, ec.SECP384R1)

    def test_generated_keys_full_length(self) -> None:
        """Many generated keys never have a short coordinate."""
        for _ in range(300):
            assert short_coordinate(generate_account_key()) is None

    def test_generation_redraws_short_keys(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A short-coordinate key from the generator is drawn again."""
        drawn = [
            short_coordinate_key(SHORT_X_SCALAR),
            short_coordinate_key(SHORT_Y_SCALAR),
            short_coordinate_key(5),
        ]
        calls: list[ec.EllipticCurve] = []

        def fake_generate(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
            calls.append(curve)
            return drawn[len(calls) - 1]

        monkeypatch.setattr(pem.ec, "generate_private_key", fake_generate)
        key = generate_account_key()
        assert key is drawn[2]
        assert len(calls) == 3

    def test_short_x_detected(self) -> None:
        """The fixed scalar's x coordinate has 47 bytes."""
        key = short_coordinate_key(SHORT_X_SCALAR)
        assert key.public_key().public_numbers().x.bit_length() <= 376
        assert short_coordinate(key) == "x"

    def test_short_y_detected(self) -> None:
        """The fixed scalar's y coordinate has 47 bytes."""
        key = short_coordinate_key(SHORT_Y_SCALAR)
        assert key.public_key().public_numbers().y.bit_length() <= 376
        assert short_coordinate(key) == "y"

    def test_short_coordinate_found_randomly(self) -> None:
        """Random P-384 keys include a short one within a few thousand tries."""
        for _ in range(4000):
            key = ec.generate_private_key(ec.SECP384R1())
            numbers = key.public_key().public_numbers()
            if min(numbers.x.bit_length(), numbers.y.bit_length()) <= 376:
                assert short_coordinate(key) in ("x", "y")
                return
        pytest.fail("no short coordinate in 4000 keys (chance about 3e-14)")

    def test_full_length_key_passes(self) -> None:
        """A key with both coordinates at 48 bytes has no short coordinate."""
        # Scalars below SHORT_Y_SCALAR all give full-length coordinates.
        key = short_coordinate_key(5)
        assert short_coordinate(key) is None

    def test_non_ec_key_passes(self, rsa_key: rsa.RSAPrivateKey) -> None:
        """RSA and Ed25519 keys have no coordinates to check."""
        assert short_coordinate(rsa_key) is None
        assert short_coordinate(ed25519.Ed25519PrivateKey.generate()) is None

    def test_key_pem_round_trip(self) -> None:
        """private_key_pem writes unencrypted PKCS#8."""
        key = generate_account_key()
        text = private_key_pem(key)
        assert text.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        loaded = serialization.load_pem_private_key(text, password=None)
        assert public_key_sha256(loaded) == public_key_sha256(key)


class TestSelfSigned:
    def test_pair_and_names(self) -> None:
        """make_self_signed returns a matching pair with the given names."""
        bundle = make_self_signed(
            "bootstrap",
            ["example.com", "*.example.com"],
            valid_for=datetime.timedelta(days=2),
        )
        assert bundle.key is not None
        assert bundle.leaf is not None
        assert public_key_sha256(bundle.key) == public_key_sha256(
            bundle.leaf.public_key()
        )
        assert dns_names(bundle.leaf) == ["example.com", "*.example.com"]
        assert bundle.chain == ()

    def test_validity_window(self) -> None:
        """The window starts at valid_from and lasts valid_for."""
        bundle = make_self_signed(
            "x", ["example.com"], valid_for=datetime.timedelta(days=2), valid_from=NOW
        )
        assert bundle.leaf is not None
        assert bundle.leaf.not_valid_before_utc == NOW
        assert bundle.leaf.not_valid_after_utc == NOW + datetime.timedelta(days=2)

    def test_is_self_signed(self) -> None:
        """A self-signed certificate is recognised as such."""
        bundle = make_self_signed("x", [], valid_for=datetime.timedelta(days=1))
        assert bundle.leaf is not None
        assert is_self_signed(bundle.leaf)

    def test_issued_leaf_not_self_signed(self, chain: Chain) -> None:
        """A CA-issued leaf is not self-signed."""
        assert not is_self_signed(chain.leaf.certificate)

    def test_root_is_self_signed(self, chain: Chain) -> None:
        """A root CA certificate is self-signed."""
        assert is_self_signed(chain.root.certificate)

    @pytest.mark.parametrize("curve", [ec.SECP256R1, ec.SECP384R1, ec.SECP521R1])
    def test_nist_curve_keys_usable(self, curve: type[ec.EllipticCurve]) -> None:
        """EC keys on P-256, P-384 and P-521 are usable by HAProxy."""
        assert unsupported_key(ec.generate_private_key(curve())) is None

    def test_rsa_2048_usable(self, rsa_key: rsa.RSAPrivateKey) -> None:
        """An RSA key of 2048 bits is usable by HAProxy."""
        assert unsupported_key(rsa_key) is None

    @pytest.mark.parametrize("description", UNUSABLE_KEYS)
    def test_other_keys_unusable(self, description: str) -> None:
        """Ed25519, secp256k1 and short RSA keys are named and refused."""
        reason = unsupported_key(unusable_key(description))
        assert reason is not None
        assert reason.startswith(f"the key is {description};")
        assert "EC on P-256, P-384 or P-521" in reason


class TestAtomicWrite:
    def test_new_file_mode_0600(self, tmp_path: Path) -> None:
        """A new file gets mode 0600 and the data."""
        path = tmp_path / "key.pem"
        atomic_write(path, b"data")
        assert path.read_bytes() == b"data"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_replaces_and_restricts(self, tmp_path: Path) -> None:
        """An existing 0644 file is replaced by a 0600 one."""
        path = tmp_path / "key.pem"
        path.write_bytes(b"old")
        path.chmod(0o644)
        atomic_write(path, b"new")
        assert path.read_bytes() == b"new"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_custom_mode(self, tmp_path: Path) -> None:
        """The mode argument is applied."""
        path = tmp_path / "public.pem"
        atomic_write(path, b"data", mode=0o640)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640

    def test_no_temporary_left(self, tmp_path: Path) -> None:
        """Only the target file remains in the directory."""
        atomic_write(tmp_path / "key.pem", b"data")
        assert sorted(os.listdir(tmp_path)) == ["key.pem"]

    def test_failure_keeps_old_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failing fsync leaves the old file and no temporary file."""
        path = tmp_path / "live.pem"
        path.write_bytes(b"old")

        def failing_fsync(descriptor: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(pem.os, "fsync", failing_fsync)
        with pytest.raises(OSError, match="No space left"):
            atomic_write(path, b"new")
        assert path.read_bytes() == b"old"
        assert sorted(os.listdir(tmp_path)) == ["live.pem"]

    def test_failed_replace_keeps_old(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failing rename leaves the old file and no temporary file."""
        path = tmp_path / "live.pem"
        path.write_bytes(b"old")

        def failing_replace(source: str, target: Path) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(pem.os, "replace", failing_replace)
        with pytest.raises(PermissionError):
            atomic_write(path, b"new")
        assert path.read_bytes() == b"old"
        assert sorted(os.listdir(tmp_path)) == ["live.pem"]

    def test_missing_directory_raises(self, tmp_path: Path) -> None:
        """Writing into a missing directory raises OSError."""
        with pytest.raises(FileNotFoundError):
            atomic_write(tmp_path / "absent" / "key.pem", b"data")
