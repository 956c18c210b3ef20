"""Spawning children and reaping every process that ends up ours.

Design, decided once for the whole program: this module is the only code that
waits for child processes. As PID 1 the supervisor inherits every orphan in
the container, and an orphan's exit status must be collected or it stays a
zombie. A loop of ``os.waitpid(-1, WNOHANG)`` on SIGCHLD does that, but it
also collects the status of any child another waiter is watching. So asyncio's
child watchers, ``subprocess.Popen.wait`` and ``asyncio.create_subprocess_*``
are never used here, because they would race this loop and one side would
lose an exit status. Children are started with ``os.posix_spawnp``, and
their exit codes are delivered through ``ChildReaper.wait``.

SIGCHLD is handled through ``loop.add_signal_handler``, which only wakes the
event loop. The reaping itself runs as an ordinary callback, never inside a
signal handler.
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

import structlog

log = structlog.get_logger("processes")

# Signals whose disposition a child must not inherit. Python ignores SIGPIPE
# at start-up, and an ignored signal stays ignored across exec.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class ChildReaper:
    """Reaps every child of this process and reports the ones it spawned."""

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._orphans_reaped = 0

    @property
    def orphans_reaped(self) -> int:
        """Number of processes reaped that this program did not spawn."""
        return self._orphans_reaped

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reaping on SIGCHLD, and reap what already exited."""
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        new_process_group: bool = False,
    ) -> int:
        """Start ``argv`` and return its PID; collect its code with ``wait``.

        The child inherits this process's standard streams unless ``stdout``
        or ``stderr`` give other file descriptors. Raises ``OSError`` when the
        program cannot be found or executed.
        """
        file_actions = []
        if stdout is not None:
            file_actions.append((os.POSIX_SPAWN_DUP2, stdout, 1))
        if stderr is not None:
            file_actions.append((os.POSIX_SPAWN_DUP2, stderr, 2))
        environment = dict(env if env is not None else os.environ)
        if new_process_group:
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                environment,
                file_actions=file_actions,
                setpgroup=0,
                setsigmask=(),
                setsigdef=_RESET_SIGNALS,
            )
        else:
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                environment,
                file_actions=file_actions,
                setsigmask=(),
                setsigdef=_RESET_SIGNALS,
            )
        self._waiters[pid] = asyncio.get_running_loop().create_future()
        return pid

    async def wait(self, pid: int) -> int:
        """Wait for a spawned child; returns its exit code, or -N for signal N."""
        future = self._waiters[pid]
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._waiters.pop(pid, None)

    def exited(self, pid: int) -> bool:
        """Tell whether a spawned child has been reaped."""
        future = self._waiters.get(pid)
        return future is None or future.done()

    def reap(self) -> None:
        """Collect the exit status of every child that has ended."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            future = self._waiters.get(pid)
            if future is not None and not future.done():
                future.set_result(code)
            else:
                self._orphans_reaped += 1
                log.debug("orphan_reaped", pid=pid, code=code)


async def run_captured(
    reaper: ChildReaper, argv: Sequence[str], *, timeout: float = 30.0
) -> tuple[int, str]:
    """Run ``argv`` to completion; return its exit code and combined output."""
    read_descriptor, write_descriptor = os.pipe()
    try:
        pid = reaper.spawn(argv, stdout=write_descriptor, stderr=write_descriptor)
    except BaseException:
        os.close(read_descriptor)
        raise
    finally:
        os.close(write_descriptor)

    loop = asyncio.get_running_loop()
    pipe = os.fdopen(read_descriptor, "rb")
    try:
        output = await asyncio.wait_for(loop.run_in_executor(None, pipe.read), timeout)
        code = await asyncio.wait_for(reaper.wait(pid), timeout)
    except TimeoutError:
        # Kill first, so the reading thread reaches EOF and releases the pipe.
        # Closing the pipe before that would block on the thread's read.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        pipe.close()
    return code, output.decode(errors="replace")


def describe_exit(code: int) -> str:
    """Describe an exit code from ``ChildReaper.wait`` in words for logs."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
