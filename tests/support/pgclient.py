"""A bare PostgreSQL client, for tests that send what no driver sends: statements redefined
behind a client's back, pipelines, query bytes in any encoding."""

from __future__ import annotations

import socket
import struct
from types import TracebackType

import pgwire as pg


class RawClient:
    """One connection that trusts its server (the lab's, or Witness in front of it)."""

    def __init__(self, port: int, user: str = "postgres", **params: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(pg.startup(user=user, database="postgres", **params))
        self.login = self.until_ready()

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def until_ready(self, count: int = 1) -> list[tuple[bytes, bytes]]:
        """The messages up to and including the ``count``-th ReadyForQuery."""
        out = []
        while count:
            kind, length = struct.unpack("!cI", self._read(5))
            out.append((kind, self._read(length - 4)))
            if kind == b"Z":
                count -= 1
        return out

    def tags(self, count: int = 1) -> list[str]:
        """The command tags (and error messages, as ``ERROR: ...``) up to ``count`` answers."""
        tags = []
        for kind, body in self.until_ready(count):
            if kind == b"C":
                tags.append(body.rstrip(b"\0").decode())
            elif kind == b"E":
                fields = dict((field[:1], field[1:]) for field in body.split(b"\0") if field)
                tags.append("ERROR: " + fields[b"M"].decode("utf-8", "replace"))
        return tags

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        try:
            self.sock.sendall(pg.terminate())
        finally:
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
