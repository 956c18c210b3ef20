"""A lab vault, its gateway and a supervisor, all real processes on loopback."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haproxy_acme_supervisor.lab.vault import Vault, provision, write_seed

from ..harness import ManagedProcess, SupervisorRun, free_port, python_module_argv
from .pebble import CHALLTESTSRV_BIN, PEBBLE_BIN, PebbleLab

LAB_DOMAIN = "lab.local"


@dataclass
class Lab(SupervisorRun):
    """A run against the lab gateway, which serves ``vault`` over ACME."""

    vault: Vault
    gateway: ManagedProcess | None = None
    directory_url: str = ""

    def seed(self) -> None:
        """Seed the staging file with the vault's key and certificate."""
        self.cert_dir.mkdir(mode=0o700, exist_ok=True)
        write_seed(self.vault, self.cert_dir / "certlocker.acme.pem")

    def start_gateway(self) -> None:
        port = free_port()
        self.gateway = self.start(
            "gateway",
            python_module_argv(
                "haproxy_acme_supervisor.lab",
                "gateway",
                "--vault",
                str(self.vault.directory),
                "--listen",
                f"127.0.0.1:{port}",
                "--http01-port",
                str(self.http_port),
            ),
        )
        match = self.gateway.wait_for(r"^(https://\S+/directory)$", timeout=30)
        self.directory_url = match.group(1)

    def ca_environment(self) -> dict[str, str]:
        return {
            "ACME_DIRECTORY": self.directory_url,
            "ACME_DOMAINS": LAB_DOMAIN,
            "ACME_CONTACT": "admin@lab.local",
            "ACME_CA_FILE": str(self.vault.ca_cert),
        }


@pytest.fixture
def lab(tmp_path: Path, haproxy_bin: Path) -> Iterator[Lab]:
    """A provisioned vault for lab.local; processes are stopped afterwards."""
    vault = provision(tmp_path / "vault", [LAB_DOMAIN])
    lab = Lab(root=tmp_path, haproxy_bin=haproxy_bin, vault=vault)
    try:
        yield lab
    finally:
        lab.stop_all()


@pytest.fixture
def pebble_lab(tmp_path: Path, haproxy_bin: Path) -> Iterator[PebbleLab]:
    """Folders and ports for runs against Pebble; every process is stopped after."""
    missing = [str(p) for p in (PEBBLE_BIN, CHALLTESTSRV_BIN) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run 'make setup'")
    lab = PebbleLab(root=tmp_path, haproxy_bin=haproxy_bin)
    try:
        yield lab
    finally:
        lab.stop_all()
