"""Portals bound on a connection, and commands recorded in a guessed encoding: what is known
about each, and how they are read again once the backend has said which encoding it used."""

from __future__ import annotations

from appliance.model import Command, Decoding, Prepared, Reading
from appliance.protocols.postgres import decode, sql
from appliance.protocols.postgres.encodings import hexed
from appliance.protocols.postgres.reading import Reader
from appliance.protocols.postgres.statements import Statement


def settle(statement: Statement, reader: Reader, done: int) -> None:
    """Read a statement's text again once the encoding of its pipeline is known (``done``:
    pipelines answered); one read in an encoding that will never be known stays as it is."""
    raw = statement.raw
    if raw is None or statement.final or statement.window > done:
        return
    codec = reader.at(statement.window)
    text = codec.text(raw)
    statement.raw = None
    if text is None:
        statement.text = hexed(raw)
        statement.decoding = Decoding(codec.name, raw=True)
    else:
        statement.text = text
        statement.script = sql.script(text)
        statement.decoding = None


class Portal:
    """A portal bound on this connection: its statement's text and parameters, and what is
    known about them (``doubt``: the statement's, at Bind; ``changed_by``: the first command
    since the Bind that may have run code, which may have replaced a named portal)."""

    __slots__ = (
        "changed_by",
        "decoding",
        "defined",
        "doubt",
        "epoch",
        "final",
        "formats",
        "oids",
        "param_formats",
        "params",
        "source",
        "statement",
        "text",
        "values",
    )

    def __init__(
        self,
        statement: str,
        source: Statement | None,
        doubt: Prepared | None,
        text: str,
        params: tuple[str | None, ...],
        *,
        formats: tuple[int, ...],
        epoch: int,
        defined: int,
    ) -> None:
        self.statement = statement
        self.source = source
        self.doubt = doubt
        self.text = text  # the statement's, or what the record says instead
        self.params = params
        self.formats = formats  # result formats asked for in Bind
        self.epoch = epoch  # how many transaction boundaries the client had sent before the Bind
        self.defined = defined
        self.changed_by = 0
        self.decoding: Decoding | None = None  # of the parameters, when not plain
        # While the parameters' encoding is a guess: their bytes, formats and types.
        self.values: list[bytes | None] | None = None
        self.param_formats: tuple[int, ...] = ()
        self.oids: tuple[int, ...] = ()
        self.final = False

    def settle(self, reader: Reader, done: int) -> None:
        """Read the statement and the parameters again once their encoding is known."""
        statement = self.source
        if statement is not None and statement.raw is not None:
            settle(statement, reader, done)
            if statement.raw is None and self.doubt is None:
                self.text = statement.text
        values = self.values
        if values is None or self.final or self.epoch > done:
            return
        codec = reader.at(self.epoch)
        self.params, undecoded = decode.render_params(self.param_formats, values, self.oids, codec)
        self.decoding = Decoding(codec.name, raw=True) if undecoded else None
        self.values = None

    def decoding_with(self, statement: Statement | None) -> Decoding | None:
        """An Execute's decoding: its statement's text's, and these parameters'."""
        text = statement.decoding if statement is not None else None
        params = self.decoding
        if params is None:
            return text
        if text is None:
            if params.changed_by is None and not params.raw:
                return None
            return Decoding(params.encoding, changed_by=params.changed_by)
        changed = text.changed_by if text.changed_by is not None else params.changed_by
        return Decoding(text.encoding, text.raw, changed)


class Reread:
    """What a command recorded in a guessed encoding needs to be read once the backend has
    said which encoding its pipeline began in: a Query's or FunctionCall's bytes, or an
    Execute's portal (and through it, its statement)."""

    __slots__ = ("formats", "portal", "text", "values", "window")

    def __init__(
        self,
        window: int,
        *,
        text: bytes | None = None,
        values: list[bytes | None] | None = None,
        formats: tuple[int, ...] = (),
        portal: Portal | None = None,
    ) -> None:
        self.window = window
        self.text = text
        self.values = values
        self.formats = formats
        self.portal = portal

    def reading(self, command: Command, reader: Reader, done: int) -> Reading | None:
        """``command`` read in the encoding its pipeline began in; None if never known."""
        portal = self.portal
        if portal is not None:
            portal.settle(reader, done)
            statement = portal.source
            if portal.values is not None or (statement is not None and statement.raw is not None):
                return None  # changed inside its own pipeline
            text = command.text if portal.doubt or portal.changed_by else portal.text
            return Reading(reader.at(portal.epoch).name, text, portal.params)
        codec = reader.at(self.window)
        text = command.text if self.text is None else codec.show(self.text)
        params = command.params
        if self.values is not None:
            params = decode.render_params(self.formats, self.values, (), codec)[0]
        return Reading(codec.name, text, params)
