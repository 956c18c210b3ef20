"""A lab vault, its gateway and a supervisor, all real processes on loopback."""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from haproxy_acme_supervisor.lab.vault import Vault, provision, write_seed

from ..harness import ManagedProcess, free_port, python_module_argv
from .pebble import CHALLTESTSRV_BIN, PEBBLE_BIN, PebbleLab

LAB_DOMAIN = "lab.local"


@dataclass
class Lab:
    """Ports, folders and processes of one end-to-end run."""

    root: Path
    haproxy_bin: Path
    vault: Vault
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    gateway: ManagedProcess | None = None
    directory_url: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def cert_dir(self) -> Path:
        return self.root / "certs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def seed(self) -> None:
        """Seed the staging file with the vault's key and certificate."""
        self.cert_dir.mkdir(mode=0o700, exist_ok=True)
        write_seed(self.vault, self.cert_dir / "certlocker.acme.pem")

    def start_gateway(self) -> None:
        port = free_port()
        self.gateway = self._start(
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

    def supervisor_env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HAPROXY_BIN=str(self.haproxy_bin),
            CERT_DIR=str(self.cert_dir),
            RUN_DIR=str(self.run_dir),
            ACME_DIRECTORY=self.directory_url,
            ACME_DOMAINS=LAB_DOMAIN,
            ACME_CONTACT="admin@lab.local",
            ACME_CA_FILE=str(self.vault.ca_cert),
            HTTP_BIND=f"127.0.0.1:{self.http_port}",
            HTTPS_BIND=f"127.0.0.1:{self.https_port}",
            STOP_GRACE_SECONDS="5",
        )
        env.update(overrides)
        return env

    def start_supervisor(
        self, name: str = "supervisor", **overrides: str
    ) -> ManagedProcess:
        return self._start(
            name,
            python_module_argv("haproxy_acme_supervisor", "run"),
            env=self.supervisor_env(**overrides),
        )

    def _start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(argv, self.root / f"{name}.log", env=env)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def lab(tmp_path: Path, haproxy_bin: Path) -> Iterator[Lab]:
    """A provisioned vault for lab.local; processes are stopped afterwards."""
    vault = provision(tmp_path / "vault", [LAB_DOMAIN])
    lab = Lab(root=tmp_path, haproxy_bin=haproxy_bin, vault=vault)
    try:
        yield lab
    finally:
        lab.stop_all()


LabFactory = Callable[[], Lab]


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
