"""Client for HAProxy's runtime API on the admin (stats) socket.

Each command opens its own connection, sends one line and reads until HAProxy
closes: the API's non-interactive mode. The exception is the event stream of
the ``dpapi`` ring, which stays open and yields records as HAProxy writes them.
Command names and responses follow HAProxy's management guide, section 9.3.
"""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .errors import RuntimeApiError

# Largest response read from one command; "dump ssl cert" of a bundle with a
# 4096-bit RSA key and a long chain stays well under it.
_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_COMMAND_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class AcmeTask:
    """One row of ``acme status``."""

    certificate: str
    section: str
    state: str
    expiry: str


class RuntimeApi:
    """Commands on one admin socket path."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def execute(self, command: str) -> str:
        """Send one command and return HAProxy's whole response."""
        if "\n" in command:
            raise ValueError("a runtime API command is a single line")
        return await self._exchange(command + "\n")

    async def _exchange(self, payload: str) -> str:
        reader, writer = await asyncio.open_unix_connection(
            str(self.socket_path), limit=_MAX_RESPONSE_BYTES
        )
        try:
            writer.write(payload.encode())
            await writer.drain()
            data = await asyncio.wait_for(
                reader.read(_MAX_RESPONSE_BYTES), _COMMAND_TIMEOUT_SECONDS
            )
            chunks = [data]
            while data:
                data = await asyncio.wait_for(
                    reader.read(_MAX_RESPONSE_BYTES), _COMMAND_TIMEOUT_SECONDS
                )
                chunks.append(data)
        finally:
            writer.close()
            await _closed(writer)
        return b"".join(chunks).decode(errors="replace")

    async def ping(self) -> None:
        """Check that the socket accepts a command; raises ``OSError`` if not."""
        await self.execute("show info")

    async def acme_renew(self, certificate: str) -> str:
        """Start an ACME renewal task; returns HAProxy's one-line answer."""
        return (await self.execute(f"acme renew {certificate}")).strip()

    async def acme_status(self) -> list[AcmeTask]:
        """Return the rows of ``acme status``, skipping its ``#`` header."""
        rows = []
        for line in (await self.execute("acme status")).splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) >= 4:
                rows.append(AcmeTask(*(field.strip() for field in fields[:4])))
        return rows

    async def dump_ssl_cert(self, name: str) -> bytes:
        """Return the PEM bundle HAProxy holds for ``name``: key, leaf, chain."""
        answer = await self.execute(f"dump ssl cert {name}")
        if "-----BEGIN" not in answer:
            raise RuntimeApiError(f"dump ssl cert {name}", answer)
        return answer.encode()

    async def show_ssl_cert_serial(self, name: str) -> str | None:
        """Return the serial HAProxy serves for ``name``, upper-case hex."""
        answer = await self.execute(f"show ssl cert {name}")
        match = re.search(r"^Serial:\s*([0-9A-Fa-f]+)\s*$", answer, re.MULTILINE)
        if match is None:
            return None
        return match.group(1).upper().lstrip("0") or "0"

    async def replace_ssl_cert(self, name: str, payload: bytes) -> None:
        """Replace a loaded certificate in one transaction, without a reload.

        ``set ssl cert`` opens a transaction with the new bundle and ``commit
        ssl cert`` applies it to every bind that uses ``name``. On any failure
        the transaction is aborted, so the served certificate is unchanged.
        """
        text = payload.decode().replace("\r\n", "\n")
        # An empty line ends the payload of a "<<" command.
        body = "\n".join(line for line in text.splitlines() if line.strip())
        command = f"set ssl cert {name}"
        answer = await self._exchange(f"{command} <<\n{body}\n\n")
        if "Transaction created" not in answer and "transaction updated" not in answer:
            await self._abort(name)
            raise RuntimeApiError(command, answer)

        command = f"commit ssl cert {name}"
        answer = await self.execute(command)
        if "Success!" not in answer:
            await self._abort(name)
            raise RuntimeApiError(command, answer)

    async def _abort(self, name: str) -> None:
        with contextlib.suppress(OSError):
            await self.execute(f"abort ssl cert {name}")

    async def stream_events(self, ring: str = "dpapi") -> AsyncIterator[str]:
        """Yield each new record of an event ring, as HAProxy writes it.

        ``show events <ring> -w -n -0`` waits for new records (-w), skips the
        ones already in the ring (-n) and ends each record with a NUL byte
        (-0), because a record may span several lines. The ring belongs to the
        worker, so the stream ends when the worker reloads or exits.
        """
        reader, writer = await asyncio.open_unix_connection(
            str(self.socket_path), limit=_MAX_RESPONSE_BYTES
        )
        try:
            writer.write(f"show events {ring} -w -n -0\n".encode())
            await writer.drain()
            while True:
                try:
                    record = await reader.readuntil(b"\0")
                except asyncio.IncompleteReadError:
                    return
                yield record.rstrip(b"\0").decode(errors="replace").strip()
        finally:
            writer.close()
            await _closed(writer)


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        await writer.wait_closed()
