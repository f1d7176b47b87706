"""Splits one direction of a PostgreSQL stream into messages, hopping over bodies nobody reads."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from appliance.protocols.errors import ProtocolError
from appliance.protocols.postgres.decode import DecodeError

T = TypeVar("T")

_HEADER = struct.Struct("!cI")  # type byte, then a length that counts itself but not the type
COPY_DATA = b"d"
DATA_ROW = b"D"
STARTUP_LIMIT = 10_000  # the largest startup packet PostgreSQL accepts


def types(letters: str) -> frozenset[bytes]:
    return frozenset(letter.encode("latin-1") for letter in letters)


class Phase(Generic[T]):
    """What a peer may send in one phase: types to hop over unread, and types to hand over.

    (A plain class: mypyc compiles this module, and cannot compile a generic dataclass.)
    """

    def __init__(
        self, name: str, skip: frozenset[bytes], keep: Mapping[bytes, Callable[[T, bytes], None]]
    ) -> None:
        self.name = name
        self.skip = skip
        self.keep = keep


class Framer(Generic[T]):
    """A buffer and a header-hopping loop for one direction.

    Skipped messages are never buffered, however large: they are counted when their header
    is read (``seen`` bytes in all; CopyData payload bytes and DataRows skipped for want of
    ``row_room`` go to ``account(target, copy_bytes, data_rows)``), and the rest of the body
    is stepped over as it arrives. Kept messages are buffered until complete (up to
    ``max_message``) and handed to ``phase.keep[type](target, body)``, with the counts up to
    and including them settled first, so a handler sees them in stream order.

    ``untyped`` reads the length-prefixed startup packets; the handler sets it to None when
    the typed phase begins. ``row_room``: DataRows with a larger body are skipped even when
    kept, since capture could never hold them.
    """

    def __init__(
        self,
        side: str,
        target: T,
        phase: Phase[T],
        *,
        names: Mapping[bytes, str],
        max_message: int,
        account: Callable[[T, int, int], None],
        untyped: Callable[[T, bytes], None] | None = None,
    ) -> None:
        self.side = side
        self.target = target
        self.phase = phase
        self.names = names
        self.max_message = max_message
        self.account = account
        self.untyped = untyped
        self.row_room = sys.maxsize
        self.seen = 0  # bytes of every message whose header has been read
        self.start = 0  # where the message last handed over starts (counted as ``seen``)
        self.unread = 0  # while ``untyped`` runs: bytes of the chunk after its packet
        self._buf = bytearray()  # the start of one unfinished message, never more
        self._skip = 0  # bytes of a skipped message still to come

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = memoryview(data)  # slices of it copy nothing
        if self.untyped is not None:
            data = self._feed_untyped(data)
        while self._skip or self._buf:
            if not data:
                return
            if self._skip:
                taken = min(self._skip, len(data))
                self._skip -= taken
                data = memoryview(data)[taken:]
            else:
                rest = self._complete(memoryview(data))
                if rest is None:
                    return
                data = rest
        pos = self._scan(data)
        if pos < len(data):
            self._buf += data[pos:]

    def _complete(self, data: memoryview) -> memoryview | None:
        """Finish the buffered message from ``data``; the rest of ``data``, or None if short."""
        buf = self._buf
        if len(buf) < 5:
            taken = 5 - len(buf)
            buf += data[:taken]
            data = data[taken:]
            if len(buf) < 5:
                return None
            # The header is whole: the scan hops over a skipped body or handles an empty one.
            if self._scan(bytes(buf)) == 5:
                buf.clear()
                return data
        need = int.from_bytes(buf[1:5], "big") + 1 - len(buf)
        if len(data) < need:
            buf += data
            return None
        buf += data[:need]
        message = bytes(buf)
        buf.clear()
        self._scan(message)
        return data[need:]

    def _scan(self, data: bytes | memoryview) -> int:
        """Handle every whole message in ``data``; where the first unfinished one starts.

        A skipped message that runs past the end is consumed here, the rest left to ``_skip``.
        """
        unpack = _HEADER.unpack_from
        target = self.target
        limit = self.max_message
        phase = self.phase
        skip = phase.skip
        keep = phase.keep
        room = self.row_room
        seen = self.seen
        end = len(data)
        pos = 0
        copied = rows = 0
        t = b""
        try:
            while end - pos >= 5:
                t, n = unpack(data, pos)
                if n < 4:
                    raise self._error(t, f"declares length {n}; a length counts itself, so >= 4")
                stop = pos + n + 1
                if t in skip:
                    if t == COPY_DATA:
                        copied += n - 4
                    elif n > limit and t != DATA_ROW:
                        raise self._too_big(t, n)
                elif t == DATA_ROW and n - 4 > room:
                    rows += 1
                else:
                    handler = keep.get(t)
                    if handler is None:
                        raise self._unexpected(t)
                    if n > limit:
                        raise self._too_big(t, n)
                    if stop > end:
                        break
                    if copied or rows:
                        self.account(target, copied, rows)
                        copied = rows = 0
                    self.start = seen
                    self.seen = seen = seen + n + 1
                    handler(target, bytes(data[pos + 5 : stop]))
                    pos = stop
                    phase = self.phase
                    skip = phase.skip
                    keep = phase.keep
                    room = self.row_room
                    continue
                seen += n + 1
                if stop > end:
                    self._skip = stop - end
                    pos = end
                    break
                pos = stop
        except (DecodeError, struct.error, ValueError, IndexError, OverflowError) as exc:
            raise self._malformed(t, exc) from None
        self.seen = seen
        if copied or rows:
            self.account(target, copied, rows)
        return pos

    def _feed_untyped(self, data: bytes | memoryview) -> memoryview:
        buf = self._buf
        view = memoryview(data)
        while self.untyped is not None:
            if len(buf) < 4:
                taken = 4 - len(buf)
                buf += view[:taken]
                view = view[taken:]
                if len(buf) < 4:
                    break
            n = int.from_bytes(buf[:4], "big")
            if not 8 <= n <= STARTUP_LIMIT:
                raise ProtocolError(self.side, self._bad_startup(n))
            need = n - len(buf)
            if len(view) < need:
                buf += view
                view = view[len(view) :]
                break
            buf += view[:need]
            view = view[need:]
            body = bytes(buf[4:])
            buf.clear()
            self.unread = len(view)
            try:
                self.untyped(self.target, body)
            except (DecodeError, struct.error, ValueError, IndexError) as exc:
                raise ProtocolError(
                    self.side, f"malformed startup packet of {n} bytes: {_detail(exc)}"
                ) from None
        return view

    def _bad_startup(self, n: int) -> str:
        if self._buf[0] == 0x16:
            return (
                "a TLS handshake arrived where a startup packet belongs (sslnegotiation=direct);"
                " connect with the default sslnegotiation=postgres"
            )
        return (
            f"startup packet declares length {n} (first bytes {bytes(self._buf[:4]).hex()});"
            f" expected 8 to {STARTUP_LIMIT} bytes"
        )

    def _name(self, t: bytes) -> str:
        name = self.names.get(t)
        return f"{name} ({t.decode('latin-1')!r})" if name else f"unknown message type {t!r}"

    def _error(self, t: bytes, what: str) -> ProtocolError:
        return ProtocolError(
            self.side, f"{self._name(t)} from the {self.side} in the {self.phase.name} phase {what}"
        )

    def _unexpected(self, t: bytes) -> ProtocolError:
        allowed = "".join(sorted(b.decode("latin-1") for b in (*self.phase.skip, *self.phase.keep)))
        expected = f"one of {allowed!r}" if allowed else "nothing"
        return self._error(t, f"is not allowed; expected {expected}")

    def _too_big(self, t: bytes, n: int) -> ProtocolError:
        return self._error(t, f"is {n} bytes, over the {self.max_message}-byte limit (max_message)")

    def _malformed(self, t: bytes, exc: Exception) -> ProtocolError:
        return self._error(t, f"is malformed: {_detail(exc)}")


def _detail(exc: Exception) -> str:
    if isinstance(exc, DecodeError):
        return str(exc)
    if isinstance(exc, struct.error):
        return "a field runs past the end of the message"
    return f"{type(exc).__name__}: {exc}"
