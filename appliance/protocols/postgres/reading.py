"""Which client encoding the backend reads each client message in, as far as the wire tells.

The backend reads every message in the ``client_encoding`` in force when it reads it, and
reports a change with ParameterStatus just before its next ReadyForQuery (PostgreSQL 14 and
later; earlier ones report at once, which changes nothing below). Witness decodes a message
when it is sent, before the backend has read it, so it decodes in the encoding last reported
and judges how sure that is. A *pipeline* here is what one ReadyForQuery answers: the
messages up to and including a Sync, a simple Query or a FunctionCall.

- The first message of a pipeline is read in the encoding the previous pipeline ended with.
  If that pipeline, or an earlier one, may have changed the encoding (it holds a command that
  may: one that may run code, ``SET``, ``RESET``, ``ROLLBACK``, ``COMMIT``...) and its
  answer has not come, the guess is *unsure but settled later*: the command is recorded
  as unsure (``Decoding.changed_by``), its bytes are kept, and once the backend's answers
  have reached its pipeline they are read again in the encoding that pipeline began in. The
  result then carries that reading (``Result.reading``), as a correction.
- A later message of a pipeline that holds such a command before it may be read in an
  encoding set, and even set back, inside the pipeline, which the backend never reports: it
  stays unsure for good (*final*).
- Bytes below 0x80 read the same in every encoding, so an ASCII message is always sure.

Messages sent before the login's ReadyForQuery are unsure until it comes (``changed_by``
0: the login, which reports the encoding). Rows and error messages are read in the encoding
the pipeline they answer began in.
"""

from __future__ import annotations

from appliance.model import Decoding
from appliance.protocols.postgres.encodings import UTF8, Codec, codec, hexed


class Reader:
    """The client encoding of each pipeline, as reported, and how sure a decoding is."""

    __slots__ = (
        "_changer",
        "_client",
        "_history",
        "_login",
        "_server",
        "_window",
        "_window_changer",
        "codec",
    )

    def __init__(self) -> None:
        self._client = "UTF8"
        self._server = "UTF8"
        self._history: list[tuple[int, Codec]] = [(0, UTF8)]  # (first pipeline, codec)
        self.codec = UTF8  # the encoding last reported: the guess for what is sent now
        self._login = True  # the login has not reported the encoding yet
        self._changer = -1  # the pipeline being sent: the command that may change it (-1: none)
        self._window = -1  # the latest pipeline that may change it ...
        self._window_changer = 0  # ... and that command

    def unsure(self, done: int) -> int:
        """The command that may have changed the encoding before the backend reads what is
        sent now (0: the login), or -1 when it is sure; ``done``: pipelines answered."""
        if self._changer >= 0:
            return self._changer
        if self._window >= done:
            return self._window_changer
        return 0 if self._login else -1

    def final(self) -> bool:
        """Whether what is unsure now will stay so (a change inside the pipeline)."""
        return self._changer >= 0

    def read(self, raw: bytes, done: int) -> tuple[str, Decoding | None]:
        """``raw`` as text in the guessed encoding, and how it was decoded when not plainly."""
        changer = self.unsure(done)
        current = self.codec
        if changer < 0 or raw.isascii():
            text = current.text(raw)
            if text is not None:
                return text, None
            return hexed(raw), Decoding(current.name, raw=True)
        text = current.text(raw)
        decoding = Decoding(current.name, raw=text is None, changed_by=changer)
        return hexed(raw) if text is None else text, decoding

    def changes(self, n: int, window: int) -> None:
        """Command ``n``, sent in pipeline ``window``, may change the encoding."""
        if self._changer < 0:
            self._changer = n
            self._window = window
            self._window_changer = n

    def logged_in(self) -> None:
        """The login's ReadyForQuery: its reports are all in."""
        self._login = False

    def boundary(self) -> None:
        """A pipeline ends: what follows starts a new one."""
        self._changer = -1

    def reported(self, name: str, value: str, window: int) -> None:
        """ParameterStatus, before the answer to pipeline ``window - 1`` ends: the encoding
        the backend reads pipeline ``window`` onwards in (0 during the login)."""
        if name == "client_encoding":
            self._client = value
        elif name == "server_encoding":
            self._server = value
        else:
            return
        found = codec(self._client, self._server)
        history = self._history
        if found is history[-1][1]:
            return
        if history[-1][0] >= window:
            history.pop()
        history.append((window, found))
        self.codec = found
        if len(history) > 64:  # only pipelines still in flight ever look back
            del history[1:-32]

    def at(self, window: int) -> Codec:
        """The encoding pipeline ``window`` began in, as reported."""
        for first, found in reversed(self._history):
            if first <= window:
                return found
        return self._history[0][1]
