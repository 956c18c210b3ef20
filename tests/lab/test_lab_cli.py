"""Tests of the lab command line."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from haproxy_acme_supervisor.lab.cli import EXIT_OK, EXIT_USAGE, main
from haproxy_acme_supervisor.lab.vault import Vault

SRC = Path(__file__).resolve().parents[2] / "src"


def lab_command(*arguments: str) -> list[str]:
    """Return the argv that runs ``python -m haproxy_acme_supervisor.lab``."""
    return [sys.executable, "-m", "haproxy_acme_supervisor.lab", *arguments]


def child_environment() -> dict[str, str]:
    """Return an environment in which the child imports this checkout."""
    environment = dict(os.environ)
    paths = [str(SRC), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    return environment


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    """Undo the logging set-up that main() applies, for the tests that follow."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def gateway_process(vault: Vault) -> Iterator[subprocess.Popen[str]]:
    """A gateway child process on an ephemeral loopback port."""
    process = subprocess.Popen(
        lab_command(
            "gateway", "--vault", str(vault.directory), "--listen", "127.0.0.1:0"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_environment(),
    )
    yield process
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


class TestProvisionCommand:
    def test_provision_writes_vault(self, tmp_path: Path) -> None:
        """provision creates the vault and the seed file."""
        vault_dir = tmp_path / "vault"
        seed = tmp_path / "seed.pem"
        status = main(
            [
                "provision",
                "--vault",
                str(vault_dir),
                "--domain",
                "lab.local",
                "--seed-to",
                str(seed),
            ]
        )
        assert status == EXIT_OK
        assert Vault.load(vault_dir).missing_files() == []
        assert seed.read_text().startswith("-----BEGIN PRIVATE KEY-----")

    def test_bad_domain_names_option(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An invalid --domain exits 2 with one line naming the option."""
        with pytest.raises(SystemExit) as exited:
            main(["provision", "--vault", str(tmp_path), "--domain", "bad_name"])
        error = capsys.readouterr().err
        assert exited.value.code == EXIT_USAGE
        assert "--domain" in error
        assert error.count("\n") == 1


class TestGatewayCommand:
    def test_non_loopback_listen_rejected(
        self, vault: Vault, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A --listen address outside loopback exits 2 naming the option."""
        with pytest.raises(SystemExit) as exited:
            main(
                [
                    "gateway",
                    "--vault",
                    str(vault.directory),
                    "--listen",
                    "192.0.2.1:14000",
                ]
            )
        error = capsys.readouterr().err
        assert exited.value.code == EXIT_USAGE
        assert "--listen" in error
        assert error.count("\n") == 1

    def test_missing_vault_rejected(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A --vault without vault files exits 2 naming the option."""
        with pytest.raises(SystemExit) as exited:
            main(["gateway", "--vault", str(tmp_path)])
        assert exited.value.code == EXIT_USAGE
        assert "--vault" in capsys.readouterr().err

    def test_prints_url_and_stops_on_sigterm(
        self, gateway_process: subprocess.Popen[str]
    ) -> None:
        """The gateway prints its directory URL, then exits 0 on SIGTERM."""
        assert gateway_process.stdout is not None
        line = gateway_process.stdout.readline().strip()
        os.kill(gateway_process.pid, signal.SIGTERM)
        status = gateway_process.wait(timeout=10)
        assert line.startswith("https://127.0.0.1:")
        assert line.endswith("/directory")
        assert status == EXIT_OK

    def test_stops_on_sigint(self, gateway_process: subprocess.Popen[str]) -> None:
        """SIGINT stops the gateway cleanly too."""
        assert gateway_process.stdout is not None
        gateway_process.stdout.readline()
        os.kill(gateway_process.pid, signal.SIGINT)
        assert gateway_process.wait(timeout=10) == EXIT_OK
