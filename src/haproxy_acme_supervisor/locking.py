"""One supervisor per RUN_DIR and per CERT_DIR.

Two supervisors sharing RUN_DIR would connect to each other's admin socket and
reload each other's HAProxy; two sharing CERT_DIR would race on live.pem. Each
directory therefore gets a lock file held with ``flock`` for the life of the
process. The kernel releases the lock when the process ends, however it ends,
so a crash never leaves a stale lock behind.
"""

import contextlib
import fcntl
import os
from pathlib import Path

from .errors import DirectoryInUseError

LOCK_NAME = ".haproxy-acme-supervisor.lock"


def lock_directory(directory: Path) -> int:
    """Take the directory's lock and return its descriptor; keep it open.

    Raises ``DirectoryInUseError`` naming the other supervisor's PID when the
    lock is held, and ``OSError`` when the lock file cannot be created.
    """
    path = directory / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise DirectoryInUseError(
            f"{directory} is in use by another supervisor (PID {holder}); give "
            "each instance its own RUN_DIR and CERT_DIR"
        ) from exc
    except BaseException:
        os.close(descriptor)
        raise
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor
