"""The ``run`` command: boot sequence, watch loop, signals and exit code.

One asyncio loop runs everything. Signal handlers registered with
``loop.add_signal_handler`` only put the signal on a queue, and the main task
takes it from there, so nothing is logged or awaited inside a handler. During
boot the main task races the boot against that queue, so a stop signal cancels
a boot that is still waiting. Afterwards it waits for a signal or HAProxy's
exit, while the watch loop, a task of its own, promotes what HAProxy stages.

As PID 1 of a container, the kernel drops every signal this process has no
handler for (only SIGKILL and SIGSTOP get through), so a signal outside
``STOP_SIGNALS`` and ``RELOAD_SIGNALS`` does nothing. Stop signals escalate:
the first requests a soft stop of HAProxy, the second a hard stop, and the
third kills it.
"""

import asyncio
import contextlib
import datetime
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import tenacity

from . import bootcheck
from .config import Settings
from .errors import (
    AdminSocketTimeoutError,
    CertFileError,
    ExitCode,
    HAProxyStartError,
    RuntimeApiError,
    SupervisorError,
    TemplateError,
)
from .haproxy import HAProxyProcess, install_config, read_version
from .locking import lock_directory
from .pem import PemBundle, PemError, read_bundle
from .processes import ChildReaper, describe_exit
from .promotion import LiveRecord, Outcome, Promoter
from .renewal import RENEW_RETRY_INTERVAL, RenewalPlan, plan_renewal
from .runtime import RuntimeApi
from .signals import HANDLED_SIGNALS, RELOAD_SIGNALS, STOP_SIGNALS
from .template import render_config

log = structlog.get_logger("supervisor")

ADMIN_SOCKET_TIMEOUT_SECONDS = 30.0
# How long to wait before reconnecting to the event ring after it closed.
EVENT_STREAM_RETRY_SECONDS = 1.0
# How often the admin socket is checked while the event stream is open.
ADMIN_CHECK_SECONDS = 5.0


@dataclass
class _Stopping:
    """Event that ended the main task's wait: a signal or HAProxy's exit."""

    signal_number: signal.Signals | None = None
    haproxy_code: int | None = None


class _StopWhenExited(tenacity.stop.stop_base):
    """Stops retrying as soon as HAProxy has exited: its socket will never come."""

    def __init__(self, haproxy: HAProxyProcess) -> None:
        self._haproxy = haproxy

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return not self._haproxy.running


class Supervisor:
    """Starts HAProxy, promotes what it stages, and stops it on request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reaper = ChildReaper()
        self.api = RuntimeApi(settings.admin_socket)
        self.master = RuntimeApi(settings.master_socket)
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._announced = False
        self.haproxy: HAProxyProcess | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._events: asyncio.Task[None] | None = None
        self._renew_requested: dict[str, datetime.datetime] = {}
        self._report: bootcheck.BootReport | None = None
        self._locks: list[int] = []

    async def run(self) -> int:
        """Run the whole boot sequence, then supervise until stopped.

        A stop signal that arrives during boot cancels the boot, stops HAProxy
        if it was started, and exits 0. Boot can take as long as the admin
        socket timeout, longer than a container runtime waits before SIGKILL.
        """
        loop = asyncio.get_running_loop()
        self.reaper.install(loop)
        for signal_number in HANDLED_SIGNALS:
            loop.add_signal_handler(
                signal_number, self._signals.put_nowait, signal_number
            )
        # Signals blocked since the process started (see block_signals) are
        # delivered now, to the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

        boot = asyncio.create_task(self._boot(), name="boot")
        while not boot.done():
            signal_wait = asyncio.ensure_future(self._signals.get())
            await asyncio.wait({boot, signal_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not signal_wait.done():
                signal_wait.cancel()
                continue
            received = signal_wait.result()
            if received in STOP_SIGNALS:
                return await self._abort_boot(boot, received)
            log.warning("reload_ignored_during_boot", signal=received.name)

        try:
            boot.result()
            return await self._supervise()
        except BaseException:
            if self.haproxy is not None:
                await self.haproxy.stop(self.settings.stop_grace_seconds)
            raise
        finally:
            await self._stop_watching()

    async def _boot(self) -> None:
        """Prepare files, start HAProxy, connect, order, and start watching."""
        self._lock_directories()
        report = bootcheck.prepare_cert_dir(self.settings)
        self._report = report
        version = await read_version(self.reaper, self.settings.haproxy_bin)
        log.info(
            "haproxy_version", version=version.text, binary=self.settings.haproxy_bin
        )
        wildcards = [name for name in self.settings.domains if name.startswith("*.")]
        if wildcards:
            log.warning(
                "wildcard_needs_dns01",
                domains=",".join(wildcards),
                reason="the template answers http-01 only; Let's Encrypt and "
                "most CAs issue wildcards through dns-01",
            )
        if self.settings.insecure_skip_verify:
            log.warning(
                "acme_tls_verification_disabled",
                variable="ACME_INSECURE_SKIP_VERIFY",
                directory=self.settings.acme_directory,
            )
        await self._write_config()

        self.haproxy = HAProxyProcess(
            self.reaper,
            self.settings.haproxy_bin,
            self.settings.rendered_config,
            self.settings.master_socket,
        )
        self.haproxy.start()
        await self._wait_for_admin_socket()

        throwaway = {report.bootstrap_fingerprint}
        if report.placeholder_fingerprint:
            throwaway.add(report.placeholder_fingerprint)
        promoters = [
            Promoter(
                self.api,
                spec,
                self.settings.paths,
                frozenset(throwaway),
                self.settings.acme_directory,
            )
            for spec in self.settings.certificates
        ]
        for promoter in promoters:
            await promoter.remember_loaded()
            await self._renew_on_start(promoter)

        self._watcher = asyncio.create_task(self._watch(promoters), name="watch")

    def _lock_directories(self) -> None:
        """Create RUN_DIR and CERT_DIR if needed and lock both for this process."""
        for directory, mode in (
            (self.settings.run_dir, 0o755),
            (self.settings.cert_dir, 0o700),
        ):
            try:
                directory.mkdir(mode=mode, parents=True, exist_ok=True)
                self._locks.append(lock_directory(directory))
            except OSError as exc:
                raise CertFileError(
                    directory, f"cannot be created or locked: {exc.strerror}"
                ) from exc

    async def _abort_boot(
        self, boot: "asyncio.Task[None]", signal_number: signal.Signals
    ) -> int:
        """Cancel an unfinished boot on a stop signal and stop what it started."""
        log.info("stop_requested_during_boot", signal=signal_number.name)
        boot.cancel()
        with contextlib.suppress(asyncio.CancelledError, SupervisorError):
            await boot
        if self.haproxy is not None and self.haproxy.pid is not None:
            return await self._stop(signal_number)
        log.info("supervisor_stopped", during="boot")
        return ExitCode.OK

    async def _stop_watching(self) -> None:
        """Cancel the watch loop, which also closes its admin socket sessions."""
        if self._watcher is None:
            return
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        self._watcher = None

    async def _write_config(self) -> None:
        """Render the template and install it once ``haproxy -c`` accepts it."""
        path = self.settings.rendered_config
        try:
            self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TemplateError(path, f"cannot be written: {exc.strerror}") from exc
        await install_config(
            self.reaper, self.settings.haproxy_bin, render_config(self.settings), path
        )
        log.info("config_rendered", path=str(path))

    async def _wait_for_admin_socket(self) -> None:
        """Retry the admin socket until it responds, HAProxy exits, or time runs out."""
        assert self.haproxy is not None
        haproxy = self.haproxy

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(OSError),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
            stop=tenacity.stop_any(
                tenacity.stop_after_delay(ADMIN_SOCKET_TIMEOUT_SECONDS),
                _StopWhenExited(haproxy),
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.api.ping()
        except OSError as exc:
            if not haproxy.running:
                code = haproxy.exit_task.result()
                raise HAProxyStartError(
                    f"HAProxy {describe_exit(code)} before its admin socket "
                    f"{self.settings.admin_socket} came up; see its output above"
                ) from exc
            raise AdminSocketTimeoutError(
                f"admin socket {self.settings.admin_socket} did not respond within "
                f"{ADMIN_SOCKET_TIMEOUT_SECONDS:.0f} s: {exc}"
            ) from exc
        log.info("admin_socket_ready", path=str(self.settings.admin_socket))

    def _plan(self, promoter: Promoter) -> RenewalPlan:
        try:
            live: PemBundle | None = read_bundle(self.settings.paths.live)
        except (OSError, PemError):
            live = None
        record = LiveRecord.read(self.settings.paths.live_record)
        directory_change = None
        configured = self.settings.acme_directory
        if record is not None and record.acme_directory != configured:
            directory_change = (record.acme_directory, configured)
        expected_key = None
        if self.settings.reuse_key and self._report is not None:
            expected_key = self._report.seeded_key_sha256
        return plan_renewal(
            live,
            promoter.spec.domains,
            throwaway_fingerprints=promoter.throwaway_fingerprints,
            now=_utc_now(),
            directory_change=directory_change,
            expected_key_sha256=expected_key,
        )

    async def _renew_on_start(self, promoter: Promoter) -> None:
        """Order at start as ACME_RENEW_ON_START requests, and log the reason."""
        mode = self.settings.renew_on_start
        plan = self._plan(promoter)
        if mode == "always":
            order, reason = True, "ACME_RENEW_ON_START=always"
        elif mode == "never":
            order, reason = False, f"ACME_RENEW_ON_START=never; {plan.reason}"
            # The first renewal check while running waits one retry interval.
            self._renew_requested[promoter.spec.name] = _utc_now()
        else:
            order, reason = plan.order_now, plan.reason
        log.info(
            "renew_on_start",
            cert=promoter.spec.name,
            decision="order" if order else "skip",
            reason=reason,
        )
        if order:
            await self._renew(promoter)

    async def _renew_if_due(self, promoter: Promoter) -> float:
        """Order when live.pem falls due; returns seconds until the next look."""
        plan = self._plan(promoter)
        now = _utc_now()
        last = self._renew_requested.get(promoter.spec.name)
        retry_at = last + RENEW_RETRY_INTERVAL if last else now
        if plan.order_now and now >= retry_at:
            log.info("renewal_due", cert=promoter.spec.name, reason=plan.reason)
            await self._renew(promoter)
            retry_at = now + RENEW_RETRY_INTERVAL
        next_look = retry_at if plan.order_now else plan.due_at
        if next_look is None:
            return self.settings.staged_poll_seconds
        return max(1.0, (next_look - now).total_seconds())

    async def _renew(self, promoter: Promoter) -> None:
        certificate = promoter.spec.staged_ref
        self._renew_requested[promoter.spec.name] = _utc_now()
        try:
            answer = await self.api.acme_renew(certificate)
        except OSError as exc:
            log.error("acme_renew_failed", cert=certificate, error=str(exc))
            return
        log.info("acme_renew_requested", cert=certificate, response=answer)

    async def _supervise(self) -> int:
        """Wait for a signal or HAProxy's exit and act on it; returns the exit code."""
        assert self.haproxy is not None
        while True:
            stopping = await self._next_event()
            if stopping.haproxy_code is not None:
                code = stopping.haproxy_code
                log.error(
                    "haproxy_exited_unexpectedly",
                    code=code,
                    status=describe_exit(code),
                )
                if code < 0:
                    return ExitCode.for_signal(-code)
                # An unrequested clean exit must not look like a clean stop to a
                # restart policy such as "on-failure".
                return code or ExitCode.HAPROXY_STOPPED_OUTSIDE
            assert stopping.signal_number is not None
            if stopping.signal_number in RELOAD_SIGNALS:
                await self._reload()
                continue
            return await self._stop(stopping.signal_number)

    async def _next_event(self) -> _Stopping:
        assert self.haproxy is not None
        signal_wait = asyncio.ensure_future(self._signals.get())
        done, _ = await asyncio.wait(
            {signal_wait, self.haproxy.exit_task},
            return_when=asyncio.FIRST_COMPLETED,
        )
        if signal_wait in done:
            return _Stopping(signal_number=signal_wait.result())
        signal_wait.cancel()
        return _Stopping(haproxy_code=self.haproxy.exit_task.result())

    async def _stop(self, signal_number: signal.Signals) -> int:
        """Stop HAProxy gracefully and return the exit code.

        A second stop signal skips the grace period with a hard stop (SIGTERM),
        a third one kills HAProxy. The code is 0 unless HAProxy had to be
        killed with SIGKILL, by a third signal or after a hard stop failed.
        """
        assert self.haproxy is not None
        log.info("stop_requested", signal=signal_number.name)
        # An open "show events -w" session would hold a soft-stopping worker.
        await self._stop_watching()
        grace = self.settings.stop_grace_seconds
        stop = asyncio.ensure_future(self.haproxy.stop(grace))
        escalations = [signal.SIGTERM, signal.SIGKILL]
        while not stop.done():
            signal_wait = asyncio.ensure_future(self._signals.get())
            done, _ = await asyncio.wait(
                {stop, signal_wait}, return_when=asyncio.FIRST_COMPLETED
            )
            if signal_wait not in done:
                signal_wait.cancel()
            elif signal_wait.result() in STOP_SIGNALS:
                escalation = escalations.pop(0) if escalations else signal.SIGKILL
                log.warning(
                    "stop_forced",
                    signal=signal_wait.result().name,
                    sent=escalation.name,
                )
                self.haproxy.send(escalation)
        code = stop.result()
        if code == -signal.SIGKILL:
            return ExitCode.for_signal(signal.SIGKILL)
        log.info("supervisor_stopped", haproxy_status=describe_exit(code))
        return ExitCode.OK

    async def _reload(self) -> None:
        """Re-render and check the configuration, then reload HAProxy.

        The reload goes through the master CLI, which responds only once the new
        worker has loaded or failed to, so the result can be logged. The
        event ring and the admin socket belong to the old worker, so the event
        stream is reopened on the new one and the staged bundle checked again.
        A configuration ``haproxy -c`` rejects never replaces the rendered file.
        """
        try:
            await install_config(
                self.reaper,
                self.settings.haproxy_bin,
                render_config(self.settings),
                self.settings.rendered_config,
            )
        except SupervisorError as exc:
            log.error("reload_rejected", error=str(exc))
            return
        try:
            answer = await self.master.execute("reload")
        except OSError as exc:
            log.error("reload_failed", error=str(exc))
            return
        if not answer.startswith("Success=1"):
            alerts = [line for line in answer.splitlines() if "[ALERT]" in line]
            log.error("reload_failed", error=(alerts or [answer.strip()])[0])
            return
        log.info("reloaded")
        self._restart_events()
        self._wakeup.set()

    async def _watch(self, promoters: list[Promoter]) -> None:
        """Promote staged bundles when HAProxy announces them; poll as a safety net."""
        self._restart_events()
        try:
            announced = False
            while True:
                timeout = self.settings.staged_poll_seconds
                for promoter in promoters:
                    await self._check(promoter, announced=announced)
                    timeout = min(timeout, await self._renew_if_due(promoter))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                # Clear and read together, with no await in between, so an
                # announcement made during a check is not lost.
                self._wakeup.clear()
                announced, self._announced = self._announced, False
        finally:
            if self._events is not None:
                self._events.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._events
                self._events = None

    def _restart_events(self) -> None:
        """(Re)open the event stream; closing the old one frees the old worker."""
        if self._events is not None:
            self._events.cancel()
        self._events = asyncio.create_task(self._follow_events(), name="events")

    async def _check(self, promoter: Promoter, *, announced: bool) -> None:
        try:
            outcome = await promoter.check(announced=announced)
        except (RuntimeApiError, OSError) as exc:
            log.error("staged_check_failed", cert=promoter.spec.name, error=str(exc))
            return
        # Polls repeat the same outcome every few minutes; only a check that
        # HAProxy announced, or one that promoted, is worth an info line.
        if outcome is Outcome.PROMOTED or announced:
            log.info("staged_checked", cert=promoter.spec.name, outcome=outcome.value)
        else:
            log.debug("staged_checked", cert=promoter.spec.name, outcome=outcome.value)

    async def _follow_events(self) -> None:
        """Keep an event stream open on the current worker, and watch its socket.

        The open ``show events -w`` session would keep a soft-stopping worker
        alive for ever, so while it is open the admin socket is checked every
        few seconds. When the socket stops responding (the worker is stopping,
        because its master got SIGUSR1 from outside, say), the session is
        closed so the worker can exit.
        """
        while True:
            stream = asyncio.create_task(self._read_events())
            try:
                while not stream.done():
                    await asyncio.wait({stream}, timeout=ADMIN_CHECK_SECONDS)
                    if stream.done():
                        break
                    try:
                        await self.api.ping()
                    except OSError as exc:
                        log.warning("admin_socket_lost", error=str(exc))
                        break
            finally:
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream
            await asyncio.sleep(EVENT_STREAM_RETRY_SECONDS)

    async def _read_events(self) -> None:
        """Wake the watch loop on each ``acme newcert`` record of the dpapi ring."""
        try:
            async for record in self.api.stream_events("dpapi"):
                if " acme newcert " in f" {record} ":
                    log.info("acme_newcert_event", record=record.split(">", 1)[-1])
                    self._announced = True
                    self._wakeup.set()
        except OSError as exc:
            log.debug("event_stream_unavailable", error=str(exc))


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def run(settings: Settings) -> int:
    """Run the supervisor to completion and return the process exit code."""
    return asyncio.run(_run_logged(Supervisor(settings).run))


async def _run_logged(main: Callable[[], Awaitable[int]]) -> int:
    try:
        return await main()
    except SupervisorError as exc:
        log.error("start_failed", error=str(exc), exit_code=int(exc.exit_code))
        return int(exc.exit_code)
    except Exception:
        log.exception("internal_error", exit_code=int(ExitCode.INTERNAL_ERROR))
        return ExitCode.INTERNAL_ERROR
