"""The signals the supervisor acts on, and blocking them until it can.

Stop signals (SIGTERM, SIGINT, SIGUSR1, SIGQUIT) lead to a graceful stop of
HAProxy; reload signals (SIGHUP, SIGUSR2) to a checked reload. This module
imports nothing but the standard library, so the command line can block these
signals before anything slow is imported.
"""

import signal

# SIGQUIT counts as a stop because some images use it as their stop signal,
# and as PID 1 an unhandled signal is silently dropped.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGQUIT)
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)
HANDLED_SIGNALS = (*STOP_SIGNALS, *RELOAD_SIGNALS)


def block_signals() -> None:
    """Hold stop and reload signals pending until the supervisor handles them.

    As PID 1 the kernel discards a signal that has no handler, so a SIGTERM
    sent while Python starts would be lost and the container would run until
    its runtime's SIGKILL. A blocked signal stays pending instead, and is
    delivered when ``Supervisor.run`` unblocks it. Children start with an empty
    signal mask (see ``processes.ChildReaper.spawn``).

    NOTE: the interpreter's own start-up, before this runs, is still a window
    of some tens of milliseconds in which a stop signal to PID 1 is lost.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
