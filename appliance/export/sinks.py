"""Where an export's messages go: a file (the only writes of exports) or a syslog server
(their only sockets)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from appliance.config import host_port
from appliance.export import syslog
from appliance.export.formats import Format
from appliance.export.record import Record


class SinkError(Exception):
    """The destination cannot be written or reached; the message says which and why."""


def _body(fmt: Format, messages: list[bytes]) -> bytes:
    if fmt.text:
        return b"".join(m + b"\n" for m in messages)
    return b"".join(messages)


class OutFile:
    """One export into a new file, or to standard output (``path`` None).

    The file is written beside its place under a temporary name and moved there once the
    export is complete, so that a failed export leaves no half file behind."""

    def __init__(self, path: Path | None, fmt: Format) -> None:
        self.fmt = fmt
        self.path = path
        self._tmp: str | None = None
        if path is None:
            self._out: BinaryIO = sys.stdout.buffer
        else:
            try:
                fd, self._tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
            except OSError as exc:
                raise SinkError(f"{path}: cannot write: {exc.strerror}") from None
            self._out = os.fdopen(fd, "wb")
        self._write(fmt.header)

    def write(self, record: Record, messages: list[bytes]) -> None:
        if messages:
            self._write(_body(self.fmt, messages))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._out.write(data)
        except OSError as exc:
            raise SinkError(
                f"{self.path or 'standard output'}: cannot write: {exc.strerror}"
            ) from None

    def close(self, *, complete: bool) -> None:
        """Flush; a file is moved into place if ``complete``, removed otherwise."""
        tmp = self._tmp
        try:
            self._out.flush()
            if tmp is not None:
                self._out.close()
                if complete:
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, str(self.path))
                    tmp = None
        except OSError as exc:
            raise SinkError(
                f"{self.path or 'standard output'}: cannot write: {exc.strerror}"
            ) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


class AppendFile:
    """A continuous export's file, appended to after its first ``size`` bytes: what was
    written after the last size saved is written again, so never twice. A file shorter
    than ``size`` (rotated, or emptied) is started anew."""

    def __init__(self, path: Path, fmt: Format, size: int) -> None:
        self.path = path
        self.fmt = fmt
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SinkError(f"{path}: cannot write: {exc.strerror}") from None
        try:
            have = os.fstat(self._fd).st_size
            self.size = size if have >= size else 0
            if have != self.size:
                os.ftruncate(self._fd, self.size)
            os.lseek(self._fd, self.size, os.SEEK_SET)
            if self.size == 0:
                self._write(fmt.header)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, record: Record, messages: list[bytes]) -> None:
        self._write(_body(self.fmt, messages))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot write: {exc.strerror}") from None
        self.size += len(data)

    def close(self, *, complete: bool = True) -> None:
        os.close(self._fd)


class Syslog:
    """A syslog server, over UDP (a datagram a message) or TCP (octet counting)."""

    TIMEOUT = 10.0

    def __init__(self, where: str, fmt: Format, *, transport: str, framing: str, host: str) -> None:
        self.where = where
        self.target = host_port(where)
        self.fmt = fmt
        self.transport = transport
        self.framing = framing
        self.host = host
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        host, port = self.target
        kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
        try:
            found = socket.getaddrinfo(host, port, type=kind)
        except socket.gaierror as exc:
            raise SinkError(f"syslog {self.where}: cannot resolve {host}: {exc.strerror}") from None
        family, _, proto, _, addr = found[0]
        sock = socket.socket(family, kind, proto)
        sock.settimeout(self.TIMEOUT)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            raise self._failed("connect", exc) from None
        self._sock = sock
        return sock

    def write(self, record: Record, messages: list[bytes]) -> None:
        for body in messages:
            data = syslog.message(
                body, ts=record.ts, host=self.host, msgid=record.type, framing=self.framing
            )
            self.send(syslog.frame(data, self.transport))

    def send(self, data: bytes) -> None:
        sock = self._connect()
        try:
            if self.transport == "tcp":
                sock.sendall(data)
            else:
                sock.send(data)
        except OSError as exc:
            self.close()
            raise self._failed("send", exc) from None

    def _failed(self, doing: str, exc: OSError) -> SinkError:
        why = exc.strerror or str(exc) or type(exc).__name__
        return SinkError(f"syslog {self.where} ({self.transport}): cannot {doing}: {why}")

    def close(self, *, complete: bool = True) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
