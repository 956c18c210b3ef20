"""The supervisor image as real containers: start, health, signals, compose.

Containers use the host's network and bind to free loopback ports, except the
production compose test, which publishes ports the way operators do. ACME
points at a closed loopback port unless the lab gateway runs, so nothing
outside this machine is contacted.
"""

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from haproxy_acme_supervisor.lab.vault import provision, write_seed
from haproxy_acme_supervisor.pem import (
    fingerprint,
    parse_bundle,
    public_key_sha256,
    read_bundle,
)

from ..harness import REPO, certificate_sha256, free_port, served_certificate
from .conftest import (
    RUN_ID,
    ComposeProject,
    Container,
    ContainerFactory,
    docker,
    wait_until,
)

pytestmark = pytest.mark.docker

DOMAIN = "lab.local"
CERT_DIR = "/usr/local/etc/haproxy/certs"
VENV_BIN = "/opt/haproxy-acme-supervisor/bin"
VAULT_DIR = "/var/lib/haproxy-acme-supervisor/vault"
PROMOTED = r"event='cert_promoted'"
BOOTSTRAP_CREATED = r"event='bootstrap_created' .*sha256='([0-9a-f]{64})'"
# uid and gid of the haproxy user in the official image and the local base.
HAPROXY_UID = 99
# docker stop sends SIGKILL after 10 s; a graceful stop must end well before.
STOP_BUDGET_SECONDS = 5.0


@dataclass
class Supervised:
    """A running supervisor container and its TLS port on 127.0.0.1."""

    container: Container
    https_port: int


def closed_acme_env(https_port: int) -> dict[str, str]:
    """Settings for a supervisor whose ACME directory is a closed loopback port."""
    return {
        "CERTLOCKER_ACME_REQUIRE_SEEDED_KEY": "0",
        "ACME_DIRECTORY": f"https://127.0.0.1:{free_port()}/directory",
        "ACME_DOMAINS": DOMAIN,
        "HTTP_BIND": f"127.0.0.1:{free_port()}",
        "HTTPS_BIND": f"127.0.0.1:{https_port}",
        "STOP_GRACE_SECONDS": "5",
    }


@pytest.fixture
def supervised(start_container: ContainerFactory) -> Supervised:
    """A supervisor container whose admin socket accepts commands."""
    https_port = free_port()
    container = start_container(closed_acme_env(https_port))
    container.wait_for_log(r"event='admin_socket_ready'")
    return Supervised(container, https_port)


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Wait until 127.0.0.1:``port`` accepts TCP connections."""

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(accepts, timeout, lambda: f"nothing listens on 127.0.0.1:{port}")


def haproxy_master_pid(container: Container) -> int:
    """Find the HAProxy master inside the container: the haproxy child of PID 1."""
    listing = container.exec(
        "sh", "-c", 'for d in /proc/[0-9]*; do cat "$d/stat"; echo; done'
    )
    masters = []
    for line in listing.splitlines():
        # /proc/PID/stat: "pid (comm) state ppid ...".
        fields = line.split()
        if len(fields) > 3 and fields[1] == "(haproxy)" and fields[3] == "1":
            masters.append(int(fields[0]))
    assert len(masters) == 1, listing
    return masters[0]


def test_image_config(image: str) -> None:
    """The image runs the supervisor as haproxy, stops on SIGTERM, has a check."""
    output = docker("image", "inspect", "--format", "{{json .Config}}", image).stdout
    config = json.loads(output)
    assert config["User"] == "haproxy"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == [f"{VENV_BIN}/haproxy-acme-supervisor", "run"]
    assert not config.get("Cmd")
    assert config["Healthcheck"]["Test"] == ["CMD", f"{VENV_BIN}/healthcheck"]
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    assert f"CERT_DIR={CERT_DIR}" in config["Env"]
    assert "HTTPS_BIND=*:8443" in config["Env"]
    assert list(config["Volumes"]) == [CERT_DIR]


def test_bootstrap_certificate_served(supervised: Supervised) -> None:
    """Before any ACME order, the TLS port serves the bootstrap certificate."""
    bootstrap = supervised.container.wait_for_log(BOOTSTRAP_CREATED).group(1)
    served = served_certificate(supervised.https_port, DOMAIN)
    assert certificate_sha256(served) == bootstrap


def test_container_reports_healthy(supervised: Supervised) -> None:
    """Docker's health check reports healthy once HAProxy responds."""
    supervised.container.wait_for_health("healthy", timeout=30)
    output = supervised.container.inspect(
        "{{(index .State.Health.Log 0).Output}}"
    ).strip()
    assert output == "healthy"


def test_healthcheck_fails_without_haproxy(image: str) -> None:
    """The health check exits 1 and names the admin socket when nothing runs."""
    result = docker(
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        "--entrypoint",
        f"{VENV_BIN}/healthcheck",
        image,
        check=False,
    )
    assert result.returncode == 1
    assert "admin socket /var/run/haproxy/admin.sock" in result.stdout


def test_supervisor_is_pid_1(supervised: Supervised) -> None:
    """PID 1 in the container is the supervisor's run command."""
    command_line = supervised.container.exec("cat", "/proc/1/cmdline").split("\0")
    assert command_line[1] == f"{VENV_BIN}/haproxy-acme-supervisor"
    assert command_line[2] == "run"


def test_key_files_private(supervised: Supervised) -> None:
    """Every key file in the certificate volume is 0600 and owned by haproxy."""
    listing = supervised.container.exec(
        "stat",
        "--format",
        "%a %U %n",
        CERT_DIR,
        f"{CERT_DIR}/acme.account.key",
        f"{CERT_DIR}/bootstrap.pem",
        f"{CERT_DIR}/live.pem",
        f"{CERT_DIR}/certlocker.acme.pem",
    ).splitlines()
    assert listing[0] == f"700 haproxy {CERT_DIR}"
    for line in listing[1:]:
        mode, owner, _ = line.split(" ", 2)
        assert mode == "600", line
        assert owner == "haproxy", line


def test_docker_stop_exits_zero(supervised: Supervised) -> None:
    """docker stop ends the container gracefully, well before the kill timeout."""
    started = time.monotonic()
    docker("stop", "--time", "10", supervised.container.name)
    elapsed = time.monotonic() - started

    assert elapsed < STOP_BUDGET_SECONDS
    assert supervised.container.exit_code() == 0
    assert "event='supervisor_stopped'" in supervised.container.logs()


def test_killed_master_exits_137(supervised: Supervised) -> None:
    """SIGKILL on HAProxy's master ends the container with 128 + 9."""
    pid = haproxy_master_pid(supervised.container)
    supervised.container.exec("sh", "-c", f"kill -KILL {pid}")
    code = docker("wait", supervised.container.name, timeout=30).stdout.strip()
    assert code == "137"
    assert "event='haproxy_exited_unexpectedly'" in supervised.container.logs()


def test_production_compose_keeps_readonly_seed(
    tmp_path: Path, compose_project: Callable[..., ComposeProject]
) -> None:
    """compose.yaml starts with a read-only seed and never writes it."""
    vault = provision(tmp_path / "vault", [DOMAIN])
    seed = tmp_path / "certlocker.acme.pem"
    write_seed(vault, seed)
    if os.geteuid() == 0:
        # Group-readable, so the supervisor tries to restrict the mode.
        os.chown(seed, HAPROXY_UID, HAPROXY_UID)
        seed.chmod(0o640)
    else:
        seed.chmod(0o644)
    seed_bytes = seed.read_bytes()
    seed_mode = seed.stat().st_mode
    seeded_key = read_bundle(seed).key
    assert seeded_key is not None

    env_file = tmp_path / "supervisor.env"
    env_file.write_text(
        "ACME_DIRECTORY=https://127.0.0.1:9/directory\n"
        f"ACME_DOMAINS={DOMAIN}\n"
        "CERTLOCKER_ACME_REQUIRE_SEEDED_KEY=1\n"
        "STOP_GRACE_SECONDS=5\n"
    )
    https_port = free_port()
    project = compose_project(
        "compose.yaml",
        {
            "SUPERVISOR_ENV_FILE": str(env_file),
            "SEEDED_PEM": str(seed),
            "HTTP_PUBLISH": f"127.0.0.1:{free_port()}",
            "HTTPS_PUBLISH": f"127.0.0.1:{https_port}",
        },
    )
    project.up(wait=False)
    supervisor = project.container("supervisor")
    supervisor.wait_for_log(r"event='admin_socket_ready'")

    printed = supervisor.wait_for_log(r"ACME reusable key public sha256: (\w+)")
    assert printed.group(1) == public_key_sha256(seeded_key)
    bootstrap = supervisor.wait_for_log(BOOTSTRAP_CREATED).group(1)
    wait_for_port(https_port)
    assert certificate_sha256(served_certificate(https_port, DOMAIN)) == bootstrap
    if os.geteuid() == 0:
        assert "event='key_file_mode_not_fixed'" in supervisor.logs()

    project.compose("stop", "--timeout", "20")
    assert supervisor.exit_code() == 0
    assert seed.read_bytes() == seed_bytes
    assert seed.stat().st_mode == seed_mode


@dataclass
class LabRun:
    """The lab compose project after the vault certificate was promoted."""

    project: ComposeProject
    https_port: int
    vault_certificate: x509.Certificate
    ca_file: Path


@pytest.fixture(scope="module")
def lab_run(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    """compose.lab.yaml brought up until the supervisor promoted a certificate."""
    https_port = free_port()
    project = ComposeProject(
        REPO / "docker" / "compose.lab.yaml",
        f"{RUN_ID}-lab",
        {
            "SUPERVISOR_IMAGE": image,
            "LAB_GATEWAY_PORT": str(free_port()),
            "LAB_HTTP_PORT": str(free_port()),
            "LAB_HTTPS_PORT": str(https_port),
        },
    )
    try:
        project.up()
        supervisor = project.container("supervisor")
        supervisor.wait_for_log(PROMOTED, timeout=90)

        gateway = project.container("gateway")
        vault_pem = gateway.exec("cat", f"{VAULT_DIR}/vault.pem").encode()
        leaf = parse_bundle(vault_pem).leaf
        assert leaf is not None
        ca_file = tmp_path_factory.mktemp("lab") / "ca.pem"
        ca_file.write_text(gateway.exec("cat", f"{VAULT_DIR}/ca.pem"))
        yield LabRun(project, https_port, leaf, ca_file)
    finally:
        project.down()


def test_lab_serves_vault_certificate(lab_run: LabRun) -> None:
    """The lab compose file ends with the vault's certificate on the TLS port."""
    served = served_certificate(lab_run.https_port, DOMAIN, ca_file=lab_run.ca_file)
    assert certificate_sha256(served) == fingerprint(lab_run.vault_certificate)


def test_lab_live_file_private(lab_run: LabRun) -> None:
    """The promoted live.pem in the volume is 0600 and owned by haproxy."""
    supervisor = lab_run.project.container("supervisor")
    listing = supervisor.exec("stat", "--format", "%a %U", f"{CERT_DIR}/live.pem")
    assert listing.strip() == "600 haproxy"


def test_lab_restart_serves_promoted_certificate(lab_run: LabRun) -> None:
    """After a restart the first handshake already gets the vault certificate."""
    lab_run.project.compose("restart", "supervisor")
    wait_for_port(lab_run.https_port)

    served = served_certificate(lab_run.https_port, DOMAIN, ca_file=lab_run.ca_file)
    served_sha256 = certificate_sha256(served)
    assert served_sha256 == fingerprint(lab_run.vault_certificate)
    supervisor = lab_run.project.container("supervisor")
    found = f"event='live_found' path='{CERT_DIR}/live.pem' sha256='{served_sha256}'"
    assert found in supervisor.logs()
