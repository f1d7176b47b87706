"""The prepared statements a server holds: as its answers confirmed them, and as predicted since.

An Execute is recorded before the server sees it, so the text it will run is predicted from
the Parse and Close messages sent so far, some not yet answered. Each is assumed to do what
PostgreSQL does with it when nothing fails; the answers (ParseComplete, CloseComplete, or an
error that skips the rest of the pipeline) move each into the confirmed table, and the
prediction is rebuilt from it whenever an answer contradicts it.

A Parse that reuses a name the server may still hold is *contested*: PostgreSQL refuses it if
the name is taken. Until the answer comes, the new text is right for the rest of its own
pipeline (if the Parse fails, the server skips everything up to the Sync), but after the Sync
either text could run, so the name is AMBIGUOUS and the connection refuses to guess. Without
this, a client could redefine a name in a Parse the server rejects and have the old text run
under the new text's record.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class Statement:
    text: str
    oids: tuple[int, ...]  # parameter types, from Parse, refined by ParameterDescription


AMBIGUOUS = Statement("", ())
_UNKNOWN = ""  # the text of a statement known to exist, prepared by SQL we do not split


@dataclass(slots=True)
class _Op:
    name: str
    statement: Statement | None  # None: Close
    contested: bool = False
    synced: bool = False  # a Sync has followed it


_NAME = r'("(?:[^"]|"")+"|[^\s;"(]+)'
_DEALLOCATE = re.compile(rf"\s*deallocate\s+(?:prepare\s+)?{_NAME}\s*;?\s*", re.I)
_PREPARE = re.compile(rf"\s*prepare\s+{_NAME}[\s(][^;]*;?\s*", re.I | re.S)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Statements:
    def __init__(self) -> None:
        self._confirmed: dict[str, Statement] = {}
        self._predicted: dict[str, Statement] = {}
        self._pending: deque[_Op] = deque()
        self._unsure = False  # SQL prepared statements whose names we could not read

    def get(self, name: str) -> Statement | None:
        """The statement a Bind naming ``name`` would use now; AMBIGUOUS if that is unknowable."""
        return self._predicted.get(name)

    def parse(self, name: str, statement: Statement) -> None:
        self._add(_Op(name, statement))

    def close(self, name: str) -> None:
        self._add(_Op(name, None))

    def sync(self) -> None:
        """A Sync ends the pipeline: contested redefinitions before it become ambiguous."""
        contested = False
        for op in self._pending:
            if not op.synced:
                op.synced = True
                contested = contested or op.contested
        if contested:
            self._replay()

    def confirm(self) -> None:
        """The server answered the oldest pending Parse or Close with success."""
        op = self._pending.popleft()
        if op.statement is None:
            self._confirmed.pop(op.name, None)
        else:
            self._confirmed[op.name] = op.statement
        if op.contested:
            self._replay()

    def fail(self) -> None:
        """The oldest pending Parse or Close failed, or was skipped after an earlier error."""
        op = self._pending.popleft()
        if op.statement is not None and not op.name:
            # PostgreSQL drops the old unnamed statement before it parses the new one.
            self._confirmed.pop("", None)
        self._replay()

    def simple_query(self) -> None:
        """A simple Query replaces the unnamed statement."""
        self._confirmed.pop("", None)
        self._predicted.pop("", None)

    def sql(self, tag: str, text: str) -> None:
        """Follow PREPARE, DEALLOCATE and DISCARD ALL done in SQL: their tag, and the text."""
        confirmed = self._confirmed
        if tag in ("DEALLOCATE ALL", "DISCARD ALL"):
            self._confirmed = {n: s for n, s in confirmed.items() if not n}
            self._unsure = False
        elif tag == "DEALLOCATE":
            name = _name(_DEALLOCATE, text)
            if name is not None:
                confirmed.pop(name, None)
            else:  # keep the names, which the server may still hold, but not their texts
                self._confirmed = {
                    n: Statement(_UNKNOWN, ()) if n else s for n, s in confirmed.items()
                }
        elif tag == "PREPARE":
            name = _name(_PREPARE, text)
            if name is not None:
                confirmed[name] = Statement(_UNKNOWN, ())
            else:
                self._unsure = True
        else:
            return
        self._replay()

    def _add(self, op: _Op) -> None:
        self._pending.append(op)
        self._predict(op)

    def _predict(self, op: _Op) -> None:
        table = self._predicted
        if op.statement is None:
            table.pop(op.name, None)
        elif op.name and (op.name in table or self._unsure):
            op.contested = True
            table[op.name] = AMBIGUOUS if op.synced else op.statement
        else:
            table[op.name] = op.statement

    def _replay(self) -> None:
        self._predicted = dict(self._confirmed)
        for op in self._pending:
            op.contested = False
            self._predict(op)


def _name(pattern: re.Pattern[str], text: str) -> str | None:
    """The statement name in a one-statement ``text`` that fully matches ``pattern``."""
    match = pattern.fullmatch(text)
    if match is None:
        return None
    token = match.group(1)
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.translate(_ASCII_LOWER)  # PostgreSQL folds unquoted names, ASCII only
