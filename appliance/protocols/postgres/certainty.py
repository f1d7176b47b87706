"""Where the server may run user code, and so which named statements and portals the wire can
no longer vouch for (the rules are in ``statements``' docstring; this applies them)."""

from __future__ import annotations

from appliance.model import Prepared
from appliance.protocols.postgres import sql
from appliance.protocols.postgres.portals import Portal, settle
from appliance.protocols.postgres.reading import Reader
from appliance.protocols.postgres.statements import Statement, Statements

NO_OPS: list[int] = []  # shared, never added to
_FRESH_LIMIT = 4096


class Certainty:
    """The points where code may run, as the client's messages are sent.

    ``window`` arguments are the pipeline being sent (Sync, Query and FunctionCall end one),
    ``done`` the pipelines answered. A command that may run code marks every named statement
    and portal defined before it (``changed_by``); so does a commit after it in its
    transaction, for a commit runs what it deferred, unless the server has confirmed an open
    transaction block (``block``).
    """

    __slots__ = ("block", "deferred", "fresh", "last_code", "reader", "statements", "window")

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.statements = Statements()
        self.fresh: list[Portal] = []  # named portals bound since the last code
        self.last_code = 0  # the latest command that may have run code
        # The latest command that may have left code for its transaction's commit to run
        # (deferred triggers, WITH HOLD cursors), and the pipeline it was sent in.
        self.deferred = 0
        self.window = 0
        # Known to be inside a transaction block where what is sent now will run: the last
        # ReadyForQuery answered everything sent and said so, and nothing since ended it.
        # A Sync or the end of a Query commits nothing there.
        self.block = False

    def code(self, n: int, window: int) -> None:
        """Command ``n`` may run code: it may redefine statements and replace named portals
        defined so far, leave code for its transaction's commit, and set client_encoding."""
        if (
            n == self.deferred == self.last_code
            and self.window == window
            and not self.fresh
            and self.statements.settled()
        ):
            return  # its Bind said so already, in this pipeline
        if self.fresh or not self.statements.settled():
            self._mark(n)
        else:
            self.statements.code(n)  # nothing to mark: any name may now be taken, though
        self.last_code = n
        self.deferred = n
        self.window = window
        self.reader.changes(n, window)

    def commit(self) -> None:
        """A point where the transaction may commit, running code earlier commands left."""
        if self.deferred and not self.block and (self.fresh or not self.statements.settled()):
            self._mark(self.deferred)

    def _mark(self, n: int) -> None:
        self.statements.code(n)
        for portal in self.fresh:
            if not portal.changed_by:
                portal.changed_by = n
        self.fresh.clear()

    def ready(self, status: str, done: int, sent: int) -> None:
        """ReadyForQuery with ``status``, ``done`` of the ``sent`` pipelines answered."""
        if status != "I":
            self.block = self.block or done == sent
            return
        self.block = False
        if self.deferred and self.window < done:
            self.deferred = 0  # its transaction ended, and its commit with it

    def run(
        self, script: sql.Script, n: int, window: int, done: int
    ) -> tuple[tuple[Prepared, ...], list[int]]:
        """Follow what command ``n``'s SQL does, statement by statement: where it may run
        code, and the prepared statements it defines, drops and runs. Returns those it runs,
        and the index of each statement that defines or drops one, to settle on the answer."""
        if script.plain:
            self.code(n, window)
            return (), NO_OPS
        if not script.readable:
            self.code(n, window)  # it may run code, define or drop any name, end a block
            self.block = False
            return (), NO_OPS
        statements = self.statements
        runs: list[Prepared] = []
        ops: list[int] = []
        for index, step in enumerate(script.steps):
            op = step.op
            if op == "execute":
                statement, doubt = self.statement(step.name, done)
                if doubt is None and statement is not None:
                    how, defined = statement.how, statement.defined
                    doubt = Prepared(step.name, statement.text, how, defined)
                if doubt is not None:
                    runs.append(doubt)
            elif op == "prepare":
                made = Statement(step.body, (), sql.script(step.body), defined=n, how="prepared")
                statements.parse(step.name, made)
                ops.append(index)
            elif op == "deallocate":
                statements.close(step.name)
                ops.append(index)
            elif op == "deallocate all":
                statements.deallocate_all()
                ops.append(index)
            if step.ends:
                self.block = False
            effect = step.effect
            if effect == sql.CODE:
                self.code(n, window)
            elif effect != sql.INERT:
                if effect == sql.COMMIT:
                    self.commit()
                self.reader.changes(n, window)  # SET, RESET, ROLLBACK, COMMIT
        return tuple(runs), ops

    def statement(self, name: str, done: int) -> tuple[Statement | None, Prepared | None]:
        """The statement a Bind (or SQL EXECUTE) naming ``name`` gets now, and what the
        record must say about it instead of its text if that text is not known (else None)."""
        statement = self.statements.get(name)
        if statement is None:
            return None, Prepared(name, None, doubt="unseen", changed_by=self.unseen(name))
        guessed = self.guessed(name, done)
        if guessed >= 0:
            how, defined = statement.how, statement.defined
            return statement, Prepared(name, statement.text, how, defined, "name", guessed)
        if statement.raw is not None:
            settle(statement, self.reader, done)
        if statement.changed_by:
            doubt = statement.doubt
            if doubt is None or doubt.name != name or doubt.text != statement.text:
                changed = statement.changed_by
                how, defined = statement.how, statement.defined
                doubt = Prepared(name, statement.text, how, defined, "changed", changed)
                statement.doubt = doubt
                statement.sentence = doubt.describe()
            return statement, doubt
        if self.statements.unconfirmed(name):
            how, defined = statement.how, statement.defined
            return statement, Prepared(name, statement.text, how, defined, doubt="unconfirmed")
        return statement, None

    def unseen(self, name: str) -> int | None:
        """Which command's code may have made a statement or portal never seen on the wire:
        any named one, never the unnamed ones (code has no way to name them)."""
        return (self.last_code or None) if name else None

    def guessed(self, name: str, done: int) -> int:
        """The command that may have changed client_encoding before the backend reads a name
        sent now, when the name is not ASCII (so the backend may read another name), or -1."""
        if name.isascii() and not name.startswith("\0"):  # the NUL form: undecodable bytes
            return -1
        return self.reader.unsure(done)

    def bound(self, portal: Portal, portals: dict[str, Portal]) -> None:
        """A named portal was bound (``portals``: those open): the next code may replace it."""
        fresh = self.fresh
        fresh.append(portal)
        if len(fresh) > _FRESH_LIMIT:  # bound and closed again and again, with no code
            still = {id(p) for p in portals.values()}
            self.fresh = [p for p in fresh if id(p) in still or p is portal]
