"""The container image, and containers and compose projects made from it.

The session fixture runs ``make image``, which starts dockerd if needed and
builds the image on a local base image (cached after the first run). Every
container gets a name and label unique to this test run, every compose project
a unique project name, and all of them are removed with their volumes.
"""

import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from ..harness import REPO

# SUPERVISOR_IMAGE names the image to build and test, and BASE_HAPROXY_VERSION
# (read by make) the HAProxy of its base: 3.2 by default, or 3.4.
IMAGE = os.environ.get("SUPERVISOR_IMAGE", "haproxy-acme-supervisor:dev")
RUN_ID = f"hasup-test-{os.getpid()}-{secrets.token_hex(3)}"
RUN_LABEL = f"haproxy-acme-supervisor.test-run={RUN_ID}"
MAKE_IMAGE_TIMEOUT_SECONDS = 900.0
DOCKER_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2


def docker(
    *arguments: str,
    timeout: float = DOCKER_TIMEOUT_SECONDS,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI, and raise with its output if it fails and ``check``."""
    result = subprocess.run(
        ["docker", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(arguments)} exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def wait_until(
    condition: Callable[[], bool], timeout: float, describe: Callable[[], str]
) -> None:
    """Poll ``condition`` until it holds, or fail with ``describe()`` on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s:\n{describe()[-6000:]}")
        time.sleep(POLL_SECONDS)


class Container:
    """One container started by a test, addressed by its unique name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def health(self) -> str:
        return self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *argv: str) -> str:
        return docker("exec", self.name, *argv).stdout

    def wait_for_health(self, status: str, timeout: float = 60.0) -> None:
        wait_until(lambda: self.health() == status, timeout, self.describe)

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        compiled = re.compile(pattern, re.MULTILINE)
        wait_until(lambda: compiled.search(self.logs()) is not None, timeout, self.logs)
        match = compiled.search(self.logs())
        assert match is not None
        return match

    def describe(self) -> str:
        health = self.inspect("{{json .State.Health}}")
        return f"state: {self.inspect('{{json .State}}')}\nhealth: {health}\n" + (
            self.logs()
        )


class ComposeProject:
    """One compose project with a unique name, brought down with its volumes."""

    def __init__(self, compose_file: Path, name: str, env: Mapping[str, str]) -> None:
        self.compose_file = compose_file
        self.name = name
        self.env = {**os.environ, "SUPERVISOR_IMAGE": IMAGE, **env}

    def compose(
        self, *arguments: str, timeout: float = DOCKER_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        return docker(
            "compose",
            "--file",
            str(self.compose_file),
            "--project-name",
            self.name,
            *arguments,
            timeout=timeout,
            env=self.env,
        )

    def up(self, *, wait: bool = True) -> None:
        """Start every service, and with ``wait`` wait until each is healthy or done."""
        arguments = ["up", "--detach", *(["--wait"] if wait else [])]
        try:
            self.compose(*arguments, timeout=180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from exc

    def logs(self, service: str | None = None) -> str:
        arguments = ["logs", "--no-color", "--no-log-prefix"]
        if service is not None:
            arguments.append(service)
        return self.compose(*arguments).stdout

    def container(self, service: str) -> Container:
        container_id = self.compose("ps", "--all", "--quiet", service).stdout.strip()
        assert container_id, f"service {service} has no container"
        return Container(container_id)

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """Build the image with ``make image``, and remove leftovers of this run after."""
    log_path = REPO / ".cache" / "docker" / "make-image.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        result = subprocess.run(
            ["make", "--no-print-directory", "image", f"IMAGE={IMAGE}"],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=MAKE_IMAGE_TIMEOUT_SECONDS,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(
            f"'make image' exited with {result.returncode}: the docker tests need "
            f"a running dockerd and a built image; full output in {log_path}\n{tail}",
            pytrace=False,
        )
    yield IMAGE
    _remove_labelled()


def _remove_labelled() -> None:
    """Remove containers and volumes of this run that a failed test left."""
    label = f"label={RUN_LABEL}"
    containers = docker("ps", "--all", "--quiet", "--filter", label).stdout.split()
    if containers:
        docker("rm", "--force", "--volumes", *containers)
    volumes = docker("volume", "ls", "--quiet", "--filter", label).stdout.split()
    if volumes:
        docker("volume", "rm", "--force", *volumes)


ContainerFactory = Callable[..., Container]


@pytest.fixture
def start_container(image: str) -> Iterator[ContainerFactory]:
    """Start containers of the image, and remove each with its volumes after."""
    started: list[Container] = []

    def start(
        env: Mapping[str, str], options: Sequence[str] = (), health_interval: str = "1s"
    ) -> Container:
        name = f"{RUN_ID}-{len(started)}-{secrets.token_hex(2)}"
        arguments = [
            "run",
            "--detach",
            "--pull",
            "never",
            "--network",
            "host",
            "--name",
            name,
            "--label",
            RUN_LABEL,
            "--health-interval",
            health_interval,
            *options,
        ]
        for key, value in env.items():
            arguments += ["--env", f"{key}={value}"]
        container = Container(name)
        started.append(container)
        docker(*arguments, image)
        return container

    yield start
    for container in started:
        docker("rm", "--force", "--volumes", container.name, check=False)


@pytest.fixture
def compose_project(image: str) -> Iterator[Callable[..., ComposeProject]]:
    """Make compose projects with unique names, and bring each down after."""
    projects: list[ComposeProject] = []

    def make(compose_file: str, env: Mapping[str, str]) -> ComposeProject:
        name = f"{RUN_ID}-{len(projects)}"
        project = ComposeProject(REPO / "docker" / compose_file, name, env)
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.down()
