"""The prepared statements a server holds: as its answers confirmed them, as predicted since,
and whether the wire can vouch for each.

An Execute is recorded before the server sees it, so the text it will run is predicted from
what was sent before it: Parse and Close, and the PREPARE, DEALLOCATE and DISCARD ALL that
SQL shows (``sql.script``; statement by statement inside a simple Query). Each is assumed to
do what PostgreSQL does with it when nothing fails; the answers (ParseComplete,
CloseComplete, a command's completion, an error that skips the rest of the pipeline, a
Query's error after which its later statements did not run) move each into the confirmed
table, and the prediction is rebuilt from it whenever an answer contradicts it. A failed
Parse or PREPARE leaves the name as it was; a Parse of the unnamed statement drops the old
one even when it fails, and a simple Query drops it too.

A definition that reuses a name the server may still hold is *contested*: PostgreSQL refuses
it if the name is taken. Until the answer comes, the new text is right for the rest of its own
pipeline (if the definition fails, the server skips everything up to the Sync), but after the
Sync either text could run: the name is *unconfirmed*, and a command that uses it is recorded
as unknown. Without this, a client could redefine a name in a Parse the server rejects and
have the old text run under the new text's record.

What the wire cannot show is code, and the agent owns the schema: a function in a SELECT, a
trigger on an INSERT, a view over a function, an operator found on its search_path may all
run dynamic SQL that deallocates, prepares or redefines any named statement (DO blocks and
procedures plainly can). So ``code`` is called wherever the server may run user
code, and every named statement defined before that point is marked ``changed_by`` it; a
later Bind of one is recorded as unknown (its last text, where it was defined, and the
command that may have changed it). Such points (``certainty`` applies them) are:

- a simple Query, or an Execute, with any statement not on ``sql``'s short list of
  statements that cannot run user code (BEGIN, SAVEPOINT, RELEASE, SHOW, SET but not SET
  CONSTRAINTS, RESET, ROLLBACK, PREPARE, DEALLOCATE, and the commits below), or that Witness
  cannot read; an EXECUTE, SQL or protocol, of a statement or portal it does not know;
- a Bind of a statement the planner sees (planning evaluates the functions it can fold) or
  with parameters (their types' input functions run a domain's CHECK constraints);
- a FunctionCall;
- a commit after any of these in the same transaction, for it runs what they deferred
  (deferred constraint triggers, the queries of WITH HOLD cursors): COMMIT, END, PREPARE
  TRANSACTION, and a Sync or the end of a simple Query unless the server has confirmed that
  a transaction block is open (then they commit nothing).

So a named statement's text is certain only while nothing of the kind was sent between its
definition and the Bind: within one pipeline, Parse, Bind and Execute with nothing else
between them are; the second run of a prepared SELECT is not, since its first run may have
redefined it. After code, every name may be held by a statement the code prepared, so every
later named definition is contested. The unnamed statement is never marked: code cannot
reach it (SQL has no name for it, and DISCARD ALL keeps it). Portals follow the same rules
(a named one may be closed and reopened as a cursor by code; the unnamed one cannot, and a
running portal cannot be dropped, so its own run leaves it alone). A certain text is the
text the backend parses; what its names resolve to (a search_path, a replaced function) is
not part of it.

Names are keys as the server compares them: statement (and portal) names are looked up in a
hash keyed by their first 63 bytes (measured here in UTF-8, the usual server encoding), so
two names that agree that far are one name.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from appliance.model import Decoding, Prepared
from appliance.protocols.postgres.encodings import Codec
from appliance.protocols.postgres.sql import Script

_NAME_BYTES = 63
_FRESH_LIMIT = 4096


def key(name: str) -> str:
    """The server's key for a statement or portal name: names of 63 bytes or more are cut
    to 63 (a cut name is held as Latin-1 so that it never equals a shorter name)."""
    if len(name) < 16:  # at most 60 bytes: the common case stays cheap
        return name
    raw = name.encode("utf-8", "surrogatepass")
    return name if len(raw) < _NAME_BYTES else raw[:_NAME_BYTES].decode("latin-1") + "\0"


class Statement:
    """A statement's text as sent, and what is known about it since.

    ``defined`` is where it was defined (``model.Prepared``), ``how`` by what (``parsed`` or
    ``prepared``). ``changed_by`` is the first
    command since then that may have run code (0: none). ``decoding`` says how its text was
    decoded when that was not plain; while the encoding is only guessed, ``raw`` keeps the
    bytes and ``window`` the pipeline they were sent in, to read them again once the backend
    has said which encoding that pipeline began in (``final``: an earlier command of the same
    pipeline may have changed it, which will never be known).
    """

    __slots__ = (
        "changed_by",
        "codec",
        "decoding",
        "defined",
        "doubt",
        "fields",
        "final",
        "how",
        "oids",
        "raw",
        "script",
        "sentence",
        "source",
        "text",
        "window",
    )

    def __init__(
        self,
        text: str,
        oids: tuple[int, ...],
        script: Script,
        *,
        defined: int = 0,
        how: str = "parsed",
    ) -> None:
        self.text = text
        self.oids = oids  # parameter types, from Parse, refined by ParameterDescription
        self.script = script
        self.defined = defined
        self.how = how
        self.changed_by = 0
        # Once changed_by is set, what a record says instead of its text, kept: it is made
        # for every run of a prepared statement.
        self.doubt: Prepared | None = None
        self.sentence = ""
        self.decoding: Decoding | None = None
        self.raw: bytes | None = None
        self.window = 0
        self.final = False
        # Where Witness may parse it again (refresh): the bytes of its text as sent, and the
        # codec they were read with.
        self.source: bytes | None = None
        self.codec: Codec | None = None
        # Its result's columns, as a Describe of it said (for masking), or None.
        self.fields: tuple[Any, ...] | None = None


class _Op:
    """A definition or removal the server has not answered yet."""

    __slots__ = ("after_code", "contested", "everything", "name", "statement", "synced")

    def __init__(
        self, name: str, statement: Statement | None, after_code: bool, everything: bool = False
    ) -> None:
        self.name = name
        self.statement = statement  # None: a removal
        self.everything = everything  # a removal of every named statement
        self.after_code = after_code  # sent after code that may have taken any name
        self.contested = False
        self.synced = False  # a Sync (or the end of a simple Query) has followed it


class Statements:
    def __init__(self) -> None:
        self._confirmed: dict[str, Statement] = {}
        self._predicted: dict[str, Statement] = {}
        self._unconfirmed: set[str] = set()  # contested names after their pipeline ended
        self._pending: deque[_Op] = deque()
        self._fresh: list[Statement] = []  # named statements defined since the last code
        self._code = False  # code ran: any name may be held by a statement it prepared

    def get(self, name: str) -> Statement | None:
        """The statement a Bind naming ``name`` would use now (see ``unconfirmed``)."""
        return self._predicted.get(key(name))

    def unconfirmed(self, name: str) -> bool:
        """Whether the backend may still hold an older statement under ``name``."""
        return bool(self._unconfirmed) and key(name) in self._unconfirmed

    def parse(self, name: str, statement: Statement) -> None:
        """Parse, or SQL PREPARE: ``name`` is defined."""
        self._add(_Op(key(name), statement, self._code))

    def close(self, name: str) -> None:
        """Close, or SQL DEALLOCATE: ``name`` goes."""
        self._add(_Op(key(name), None, self._code))

    def deallocate_all(self) -> None:
        """SQL DEALLOCATE ALL or DISCARD ALL: every named statement goes."""
        self._add(_Op("", None, self._code, everything=True))

    def settled(self) -> bool:
        """Whether every statement defined so far has been marked since the last code."""
        return not self._fresh

    def code(self, n: int) -> None:
        """Command ``n`` may run code: statements defined so far may have changed."""
        if self._fresh:
            for statement in self._fresh:
                if not statement.changed_by:
                    statement.changed_by = n
            self._fresh.clear()
        self._code = True

    def sync(self) -> None:
        """A Sync ends the pipeline: contested redefinitions before it become unconfirmed."""
        if not self._pending:
            return
        contested = False
        for op in self._pending:
            if not op.synced:
                op.synced = True
                contested = contested or op.contested
        if contested:
            self._replay()

    def confirm(self) -> None:
        """The server answered the oldest pending definition or removal with success."""
        op = self._pending.popleft()
        if op.everything:
            self._confirmed = {n: s for n, s in self._confirmed.items() if not n}
        elif op.statement is None:
            self._confirmed.pop(op.name, None)
        else:
            self._confirmed[op.name] = op.statement
        if op.contested or op.everything:
            self._replay()

    def fail(self) -> None:
        """The oldest pending definition or removal failed, or was skipped after an error."""
        op = self._pending.popleft()
        if op.statement is not None and not op.name:
            # PostgreSQL drops the old unnamed statement before it parses the new one.
            self._confirmed.pop("", None)
        self._replay()

    def simple_query(self) -> None:
        """A simple Query replaces the unnamed statement."""
        self._confirmed.pop("", None)
        self._predicted.pop("", None)

    def _add(self, op: _Op) -> None:
        self._pending.append(op)
        if op.name and op.statement is not None:
            fresh = self._fresh
            fresh.append(op.statement)
            if len(fresh) > _FRESH_LIMIT:  # a client that parses and closes without end
                held = {id(s) for s in (*self._predicted.values(), *self._confirmed.values())}
                held.update(id(o.statement) for o in self._pending if o.statement is not None)
                self._fresh = [s for s in fresh if id(s) in held]
        self._predict(op)

    def _predict(self, op: _Op) -> None:
        table = self._predicted
        if op.everything:
            for name in [n for n in table if n]:
                del table[name]
            self._unconfirmed.clear()
        elif op.statement is None:
            table.pop(op.name, None)
            self._unconfirmed.discard(op.name)
        elif op.name and (op.name in table or op.after_code):
            op.contested = True
            table[op.name] = op.statement
            if op.synced:
                self._unconfirmed.add(op.name)
            else:
                self._unconfirmed.discard(op.name)
        else:
            table[op.name] = op.statement
            self._unconfirmed.discard(op.name)

    def _replay(self) -> None:
        self._predicted = dict(self._confirmed)
        self._unconfirmed = set()
        for op in self._pending:
            op.contested = False
            self._predict(op)
