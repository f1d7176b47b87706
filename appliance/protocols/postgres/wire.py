"""A PostgreSQL session's raw messages for the trail, when ``[capture] wire`` asks: sans-io.

Fed the bytes the client sent and the bytes it was sent, in order, it keeps whole messages
and gives back what to record. It fails closed: a message that may carry what the trail
must never hold stops the recording for the rest of the session, and the trail says why.

- Never recorded: the startup packet and the requests before it, the authentication
  exchange both ways (passwords, SASL), and BackendKeyData (the cancel key).
- Stops the recording: a Query or Parse whose text holds a secret the redactor finds (the
  command's record is redacted; its raw bytes are not), one that is not ASCII while the
  server does not report UTF8 (the secrets in it cannot be searched for with certainty),
  a FunctionCall (its arguments cannot be searched), more than ``limit`` bytes, and a
  stream that is not PostgreSQL's. The session stops it too where masks apply.

Each record says which way its messages went (``from``), how many bytes that way were
recorded before them (``offset``) and the other way (``peer``), and the messages
(``data``, base64): a recorded session can be replayed as two streams, with no byte
missing from either but what was never recorded.
"""

from __future__ import annotations

import base64
from typing import Any

from appliance.policy.redact import Redactor
from appliance.protocols.errors import ProtocolError
from appliance.protocols.postgres import decode
from appliance.protocols.postgres.connection import NEGOTIATIONS
from appliance.protocols.postgres.encodings import UTF8
from appliance.protocols.postgres.framing import Framer, Phase
from appliance.protocols.postgres.messages import CLIENT_MESSAGES, SERVER_MESSAGES

CLIENT, SERVER = "client", "server"
_UNRECORDED = {CLIENT: frozenset((b"p",)), SERVER: frozenset((b"R", b"K"))}


def _every(side: str) -> Phase[PostgresTap]:
    """A phase that hands every message type over, to the tap's ``message``."""

    def keeper(kind: bytes) -> Any:
        return lambda tap, body: tap.message(side, kind, body)

    return Phase("tap", frozenset(), {bytes([i]): keeper(bytes([i])) for i in range(256)})


_CLIENT, _SERVER = _every(CLIENT), _every(SERVER)
_STARTUP: Phase[PostgresTap] = Phase("startup", frozenset(), {})


class PostgresTap:
    """What to record of one session's messages, both ways (see the module)."""

    def __init__(self, redactor: Redactor, limit: int, max_message: int) -> None:
        self.redactor = redactor
        self.limit = limit
        self.sizes = {CLIENT: 0, SERVER: 0}  # bytes recorded each way
        self.stopped: str | None = None
        self._encoding = "UTF8"  # the client_encoding the server last reported
        self._kept: list[bytes] = []  # messages of the chunk being fed, to record
        self._kept_bytes = 0
        self._out: list[dict[str, Any]] = []
        self._framers = {
            CLIENT: Framer(
                CLIENT,
                self,
                _STARTUP,
                names=CLIENT_MESSAGES,
                max_message=max_message,
                account=_ignore,
                untyped=PostgresTap._startup,
            ),
            SERVER: Framer(
                SERVER,
                self,
                _SERVER,
                names=SERVER_MESSAGES,
                max_message=max_message,
                account=_ignore,
            ),
        }

    def client(self, data: bytes) -> None:
        """Bytes the client sent."""
        self._feed(CLIENT, data)

    def server(self, data: bytes) -> None:
        """Bytes the client was sent."""
        self._feed(SERVER, data)

    def withhold(self, reason: str) -> None:
        """Record nothing more of this session, and say why."""
        if self.stopped is None:
            self.stopped = reason
            self._kept.clear()
            self._kept_bytes = 0
            self._out.append({"withheld": reason})

    def take(self) -> list[dict[str, Any]]:
        """The records made since the last take, oldest first."""
        out, self._out = self._out, []
        return out

    def _feed(self, side: str, data: bytes) -> None:
        if self.stopped is not None:
            return
        try:
            self._framers[side].feed(data)
        except ProtocolError as exc:
            self._flush(side)
            self.withhold(f"the {side}'s bytes are not PostgreSQL messages: {exc.message}")
            return
        self._flush(side)

    def _flush(self, side: str) -> None:
        if not self._kept:
            return
        data = b"".join(self._kept)
        self._kept.clear()
        self._kept_bytes = 0
        other = SERVER if side == CLIENT else CLIENT
        self._out.append(
            {
                "from": side,
                "offset": self.sizes[side],
                "peer": self.sizes[other],
                "data": base64.b64encode(data).decode("ascii"),
            }
        )
        self.sizes[side] += len(data)

    def _startup(self, body: bytes) -> None:
        """An untyped packet: requests answered by the relay come before the startup packet,
        after which every message is typed."""
        if int.from_bytes(body[:4], "big") not in NEGOTIATIONS:
            framer = self._framers[CLIENT]
            framer.untyped = None
            framer.phase = _CLIENT

    def message(self, side: str, kind: bytes, body: bytes) -> None:
        """One whole message: kept, passed over, or the end of the recording."""
        if self.stopped is not None or kind in _UNRECORDED[side]:
            return
        if side == SERVER and kind == b"S":
            name, value = decode.parameter_status(body)
            if name == "client_encoding":
                self._encoding = value.upper()
        elif side == CLIENT:
            why = self._unsafe(kind, body)
            if why is not None:
                self._flush(side)
                self.withhold(why)
                return
        size = len(body) + 5
        if sum(self.sizes.values()) + self._kept_bytes + size > self.limit:
            self._flush(side)
            self.withhold(
                f"the session's raw messages passed capture.wire_bytes ({self.limit} bytes)"
            )
            return
        self._kept.append(kind + (len(body) + 4).to_bytes(4, "big") + body)
        self._kept_bytes += size

    def _unsafe(self, kind: bytes, body: bytes) -> str | None:
        """Why a client message must not be recorded, or None."""
        if kind == b"F":
            return "a FunctionCall, whose arguments cannot be searched for secrets"
        if kind == b"Q":
            raw = decode.query(body)
        elif kind == b"P":
            raw = decode.parse(body, UTF8).text
        else:
            return None
        text = self._text(raw)
        if text is None:
            return (
                f"a command text that is not ASCII while the client encoding is"
                f" {self._encoding}: its secrets cannot be searched for with certainty"
            )
        if self.redactor.command(text) is not None:
            return "a command held a secret (its record is redacted; its raw bytes are not kept)"
        return None

    def _text(self, raw: bytes) -> str | None:
        """A text as the server reads it, where that is certain: ASCII reads the same in
        every client encoding, and anything else only as UTF-8, while the server says so."""
        if raw.isascii():
            return raw.decode("ascii")
        if self._encoding != "UTF8":
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None


def _ignore(tap: PostgresTap, copied: int, rows: int) -> None:
    pass
