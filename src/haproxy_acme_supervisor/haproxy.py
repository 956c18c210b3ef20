"""The HAProxy process: version check, configuration check, start and stop.

HAProxy runs in master-worker mode in the foreground. Its master reacts to
signals as the management guide describes: SIGUSR1 is a soft stop (listeners
close, established connections finish), SIGTERM a hard stop, and SIGUSR2 or
SIGHUP a reload. The supervisor sends these deliberately and never forwards a
SIGHUP blindly, because a reload with a broken configuration must not happen.
"""

import asyncio
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import structlog

from .errors import HAProxyStartError, TemplateError
from .pem import atomic_write
from .processes import ChildReaper, describe_exit, run_captured

log = structlog.get_logger("haproxy")

MINIMUM_VERSION = (3, 2)
# A configuration check normally takes well under a second.
CHECK_TIMEOUT_SECONDS = 30.0
_VERSION_LINE = re.compile(r"HAProxy version (\d+)\.(\d+)\S*")


@dataclass(frozen=True)
class HAProxyVersion:
    """The version line of ``haproxy -vv`` and whether ACME is compiled in."""

    major: int
    minor: int
    text: str
    has_acme: bool


async def read_version(reaper: ChildReaper, binary: str) -> HAProxyVersion:
    """Run ``haproxy -vv`` and check it is 3.2 or newer with ACME support.

    Raises ``HAProxyStartError`` naming the binary otherwise.
    """
    try:
        code, output = await run_captured(reaper, [binary, "-vv"])
    except OSError as exc:
        raise HAProxyStartError(
            f"HAPROXY_BIN={binary!r} cannot be run: {exc.strerror}"
        ) from exc
    match = _VERSION_LINE.search(output)
    if code != 0 or match is None:
        raise HAProxyStartError(
            f"HAPROXY_BIN={binary!r} did not print a HAProxy version"
        )

    version = HAProxyVersion(
        major=int(match.group(1)),
        minor=int(match.group(2)),
        text=match.group(0),
        has_acme="+ACME" in output,
    )
    if (version.major, version.minor) < MINIMUM_VERSION or not version.has_acme:
        raise HAProxyStartError(
            f"HAPROXY_BIN={binary!r} is {version.text} without ACME support; "
            "the supervisor needs HAProxy 3.2 or newer built with ACME"
        )
    return version


async def check_config(reaper: ChildReaper, binary: str, config: Path) -> None:
    """Run ``haproxy -c``; raises ``TemplateError`` with HAProxy's first alert."""
    try:
        code, output = await run_captured(
            reaper, [binary, "-c", "-f", str(config)], timeout=CHECK_TIMEOUT_SECONDS
        )
    except TimeoutError as exc:
        raise TemplateError(
            config, f"'haproxy -c' did not finish within {CHECK_TIMEOUT_SECONDS:.0f} s"
        ) from exc
    if code == 0:
        return
    alerts = [line for line in output.splitlines() if "[ALERT]" in line]
    reason = alerts[0] if alerts else (output.strip().splitlines() or ["no output"])[-1]
    raise TemplateError(config, f"rejected by 'haproxy -c': {reason.strip()}")


async def install_config(
    reaper: ChildReaper, binary: str, text: str, config: Path
) -> None:
    """Replace ``config`` with ``text`` only once ``haproxy -c`` accepts it.

    The candidate is checked under a name of its own, so a rejected one leaves
    the file the running master re-reads on its next reload as it was. Raises
    ``TemplateError`` as ``check_config`` does, or when a file cannot be written.
    """
    candidate = config.with_name(f"{config.name}.candidate")
    try:
        try:
            atomic_write(candidate, text.encode(), mode=0o600)
        except OSError as exc:
            raise TemplateError(
                candidate, f"cannot be written: {exc.strerror}"
            ) from exc
        await check_config(reaper, binary, candidate)
        try:
            candidate.replace(config)
        except OSError as exc:
            raise TemplateError(config, f"cannot be replaced: {exc.strerror}") from exc
    finally:
        candidate.unlink(missing_ok=True)


class HAProxyProcess:
    """One HAProxy master process started by the supervisor."""

    def __init__(
        self, reaper: ChildReaper, binary: str, config: Path, master_socket: Path
    ) -> None:
        self._reaper = reaper
        self._binary = binary
        self._config = config
        self._master_socket = master_socket
        self.pid: int | None = None
        self._exit: asyncio.Task[int] | None = None

    def start(self) -> None:
        """Start the master in the foreground; its output goes to ours."""
        argv = [
            self._binary,
            "-W",
            "-f",
            str(self._config),
            "-S",
            f"{self._master_socket},mode,600",
        ]
        try:
            self.pid = self._reaper.spawn(argv, new_process_group=True)
        except OSError as exc:
            raise HAProxyStartError(
                f"{self._binary} cannot be started: {exc.strerror}"
            ) from exc
        self._exit = asyncio.ensure_future(self._reaper.wait(self.pid))
        log.info("haproxy_started", pid=self.pid, config=str(self._config))

    @property
    def exit_task(self) -> "asyncio.Task[int]":
        """Completes with the master's exit code (-N when killed by signal N)."""
        assert self._exit is not None, "start() first"
        return self._exit

    @property
    def running(self) -> bool:
        return self._exit is not None and not self._exit.done()

    def send(self, signal_number: signal.Signals) -> None:
        """Send a signal to the master, if it still runs."""
        if self.pid is None or not self.running:
            return
        try:
            os.kill(self.pid, signal_number)
        except ProcessLookupError:
            return
        log.info("haproxy_signalled", pid=self.pid, signal=signal_number.name)

    async def stop(self, grace_seconds: float) -> int:
        """Stop gracefully, escalating after ``grace_seconds``; returns the exit code.

        A soft stop lets established connections finish. If HAProxy still runs
        after the grace period, a hard stop follows, then SIGKILL two seconds
        later.
        """
        for signal_number, wait_seconds in (
            (signal.SIGUSR1, grace_seconds),
            (signal.SIGTERM, 2.0),
            (signal.SIGKILL, 5.0),
        ):
            if not self.running:
                break
            self.send(signal_number)
            done, _ = await asyncio.wait({self.exit_task}, timeout=wait_seconds)
            if not done:
                log.warning(
                    "haproxy_stop_slow",
                    pid=self.pid,
                    signal=signal_number.name,
                    waited_seconds=wait_seconds,
                )
        code = await self.exit_task
        log.info("haproxy_exited", pid=self.pid, code=code, status=describe_exit(code))
        return code
