"""What a SQL text may do when it runs, read from its words alone: does it run user code, and
which prepared statements does it make, run or drop.

A text is split into statements as the server splits it (at semicolons outside quotes,
comments and parentheses) and each statement is judged by its leading keywords. Anything this
module does not understand for certain is CODE, and a text it cannot split for certain is
*unreadable* (``Script.readable`` False): a backslash inside a quoted string (its meaning hangs
on ``standard_conforming_strings`` and the ``E`` prefix), ``BEGIN ATOMIC`` bodies, ``U&``
identifiers, unbalanced parentheses, an unterminated quote or comment, an unquoted name with
letters beyond ASCII, and any text over 256 KiB that would need splitting at all (a single
statement led by an ordinary keyword never does). An unreadable text may run code and make
or drop any statement.

Effects, from least to most:

- INERT: cannot run user code, cannot change settings. ``BEGIN`` and ``START TRANSACTION``,
  ``SAVEPOINT``, ``RELEASE`` (a subtransaction's commit fires no trigger: deferred ones wait
  for the top level), ``SHOW`` (settings' show functions are built in), ``PREPARE`` (parse
  analysis and rewriting only: nothing is planned or run) and ``DEALLOCATE``.
- SETTING: cannot run user code, may change settings such as ``client_encoding``: ``SET``
  (its checks are built-in C) but not ``SET CONSTRAINTS``, which fires pending deferred
  triggers; ``RESET``; ``ROLLBACK`` and ``ABORT`` (they fire nothing, but undo ``SET``).
- COMMIT: ``COMMIT``, ``END`` and ``PREPARE TRANSACTION`` run no code of their own, but a
  commit runs whatever earlier commands of the transaction left for it: deferred constraint
  triggers, and the queries of ``WITH HOLD`` cursors. The caller treats them as a point where
  the code of earlier commands may run again.
- CODE: everything else. A ``SELECT`` can call a function, an ``INSERT`` fire a trigger, a
  view hide a function, an operator resolve to one the agent defined earlier on the
  search_path; ``EXECUTE`` runs a statement; ``DISCARD``, ``CALL``, ``DO``, DDL, ``COPY``...

A superuser's C code (a conversion or type function, an event trigger) can run where none of
this expects it; an agent with such a role is out of reach of any reading of the wire.
"""

from __future__ import annotations

import re

INERT = 0
SETTING = 1
COMMIT = 2
CODE = 3


class Step:
    """One statement of a script: its effect, and what it does to prepared statements.

    ``op`` is ``""``, ``prepare`` (``name`` made from ``body``), ``execute`` (``name`` run),
    ``deallocate`` (``name`` dropped) or ``deallocate all`` (every named statement dropped:
    ``DEALLOCATE ALL`` and ``DISCARD ALL``). ``planned``: the server plans it when a portal
    is bound to it, and planning evaluates the functions it can fold (utility statements such
    as ``DO``, ``CALL`` or ``EXECUTE`` are not planned; what they run is run when they are).
    ``ends``: it ends a transaction block (``COMMIT``, ``END``, ``ROLLBACK`` and ``ABORT``,
    ``PREPARE TRANSACTION``); code cannot (a procedure's ``COMMIT`` is refused inside one).
    """

    __slots__ = ("body", "effect", "ends", "name", "op", "planned")

    def __init__(
        self,
        effect: int,
        op: str = "",
        name: str = "",
        body: str = "",
        *,
        planned: bool = False,
        ends: bool = False,
    ) -> None:
        self.effect = effect
        self.op = op
        self.name = name
        self.body = body
        self.planned = planned
        self.ends = ends


class Script:
    """A text's statements, in order; ``effect`` is the most any of them may do, ``planned``
    whether a Bind to it may run code while planning."""

    __slots__ = ("effect", "plain", "planned", "readable", "steps")

    def __init__(self, steps: tuple[Step, ...], *, readable: bool = True) -> None:
        self.steps = steps
        self.readable = readable
        self.effect = CODE if not readable else max((s.effect for s in steps), default=INERT)
        self.planned = not readable or any(s.planned for s in steps)
        # One statement that may run code and does nothing else to follow: most texts.
        self.plain = readable and len(steps) == 1 and steps[0].effect == CODE and not steps[0].op


UNREADABLE = Script((), readable=False)
_PLANNED = Script((Step(CODE, planned=True),))
_UTILITY = Script((Step(CODE),))
_EMPTY = Script(())
# Statements the planner sees: all others are utility statements, run as they are.
_PLANNED_WORDS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE", "WITH"}
)
# Leading keywords that need a closer look; any other first word is plain CODE.
_SPECIAL = frozenset(
    {
        "ABORT",
        "BEGIN",
        "COMMIT",
        "CREATE",
        "DEALLOCATE",
        "DISCARD",
        "END",
        "EXECUTE",
        "EXPLAIN",
        "PREPARE",
        "RELEASE",
        "RESET",
        "ROLLBACK",
        "SAVEPOINT",
        "SET",
        "SHOW",
        "START",
    }
)
_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_ASCII_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"\.?[0-9][A-Za-z0-9_.]*")
_DOLLAR = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$[0-9]+")
_SPACE = re.compile(r"(?:\s+|--[^\n\r]*)+")
_NAME_BYTES = 63  # NAMEDATALEN - 1: longer identifiers are cut
_SPLIT_LIMIT = 256 * 1024  # characters: a longer text that needs splitting is unreadable
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

WORD, NAME, STRING, OTHER = "w", "q", "s", "o"


class _Token:
    __slots__ = ("depth", "end", "kind", "start", "value")

    def __init__(self, kind: str, value: str, start: int, end: int, depth: int) -> None:
        self.kind = kind
        self.value = value  # a word upper-cased, a quoted name unquoted, else the source
        self.start = start
        self.end = end
        self.depth = depth  # parentheses around it


_SEEN: dict[str, Script] = {}  # texts repeat (unnamed statements, ORMs): read each once


def script(text: str) -> Script:
    """What ``text`` (a Query's, or a Parse's) may do, statement by statement."""
    plain = _plain(text)
    if plain is not None:
        return plain  # cheaper than the cache, which it would only fill with one-offs
    found = _SEEN.get(text)
    if found is None:
        found = _read(text)
        if len(text) <= 4096:
            if len(_SEEN) >= 1024:
                _SEEN.clear()
            _SEEN[text] = found
    return found


def _plain(text: str) -> Script | None:
    """One statement whose first word makes it plain code, or None when that is not plain
    to see: the common case, read without splitting."""
    first = _first_word(text)
    if first is not None and first not in _SPECIAL:
        end = text.find(";")
        if end < 0 or not text[end + 1 :].strip():
            return _PLANNED if first in _PLANNED_WORDS else _UTILITY
    return None


def _read(text: str) -> Script:
    statements = _split(text)
    if statements is None:
        return UNREADABLE
    steps = []
    for tokens, end in statements:
        step = _step(tokens, text, end)
        if step is None:
            return UNREADABLE
        steps.append(step)
    return Script(tuple(steps)) if steps else _EMPTY


def _first_word(text: str) -> str | None:
    word = _ASCII_WORD.match(text)  # most texts start with a keyword, nothing before it
    if word is None or text[word.end() : word.end() + 1] > "\x7f":
        pos = 0
        match = _SPACE.match(text)
        if match:
            pos = match.end()
        word = _WORD.match(text, pos)
    if word is None or text.startswith(("'", '"', "$", "&"), word.end()):
        return None
    return word.group().upper()


def _split(text: str) -> list[tuple[list[_Token], int]] | None:
    """The statements of ``text``: their tokens and where each ends; None when the text cannot
    be split for certain."""
    size = len(text)
    if size > _SPLIT_LIMIT:
        return None  # reading it would cost the event loop too much: it may do anything
    out: list[tuple[list[_Token], int]] = []
    tokens: list[_Token] = []
    pos = depth = 0
    while pos < size:
        c = text[pos]
        if c.isspace() or text.startswith("--", pos):
            space = _SPACE.match(text, pos)
            pos = size if space is None else space.end()
        elif text.startswith("/*", pos):
            end = _comment_end(text, pos)
            if end < 0:
                return None
            pos = end
        elif c == ";" and depth == 0:
            if tokens:
                out.append((tokens, pos))
            tokens = []
            pos += 1
        elif c == "'":
            end = _quoted(text, pos, "'")
            if end < 0 or "\\" in text[pos:end]:
                return None
            tokens.append(_Token(STRING, text[pos:end], pos, end, depth))
            pos = end
        elif c == '"':
            end = _quoted(text, pos, '"')
            if end < 0:
                return None
            value = text[pos + 1 : end - 1].replace('""', '"')
            tokens.append(_Token(NAME, value, pos, end, depth))
            pos = end
        elif c == "$":
            param = _PARAM.match(text, pos)
            if param:
                tokens.append(_Token(OTHER, param.group(), pos, param.end(), depth))
                pos = param.end()
                continue
            delimiter = _DOLLAR.match(text, pos)
            if delimiter is None:
                return None
            end = text.find(delimiter.group(), delimiter.end())
            if end < 0:
                return None
            end += len(delimiter.group())
            tokens.append(_Token(STRING, text[pos:end], pos, end, depth))
            pos = end
        elif (word := _WORD.match(text, pos)) is not None:
            pos = word.end()
            value = word.group()
            follows = text[pos : pos + 1]
            if follows == "'" and value.upper() in ("E", "B", "X", "N"):
                continue  # a string's prefix: the string comes next
            if value.upper() == "U" and text.startswith("&", pos):
                return None  # U&'...' and U&"...": escapes Witness does not read
            if value.upper() == "ATOMIC":
                return None  # BEGIN ATOMIC ... END holds semicolons of its own
            tokens.append(_Token(WORD, value, word.start(), pos, depth))
        elif (number := _NUMBER.match(text, pos)) is not None:
            tokens.append(_Token(OTHER, number.group(), pos, number.end(), depth))
            pos = number.end()
        else:
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    return None
            tokens.append(_Token(OTHER, c, pos, pos + 1, depth))
            pos += 1
    if depth:
        return None
    if tokens:
        out.append((tokens, size))
    return out


def _comment_end(text: str, pos: int) -> int:
    """The end of the (nested) block comment starting at ``pos``; -1 if it never ends."""
    depth = 0
    while True:
        opens = text.find("/*", pos)
        closes = text.find("*/", pos)
        if closes < 0:
            return -1
        if 0 <= opens < closes:
            depth += 1
            pos = opens + 2
        else:
            depth -= 1
            pos = closes + 2
            if depth == 0:
                return pos


def _quoted(text: str, pos: int, quote: str) -> int:
    """The end of the ``quote``-delimited token at ``pos`` (doubled quotes inside); -1 if none."""
    pos += 1
    while True:
        end = text.find(quote, pos)
        if end < 0:
            return -1
        if not text.startswith(quote, end + 1):
            return end + 1
        pos = end + 2


def _words(tokens: list[_Token]) -> list[str]:
    return [t.value.upper() if t.kind == WORD else "" for t in tokens]


def _step(tokens: list[_Token], text: str, end: int) -> Step | None:
    """One statement's effect and prepared-statement op; None if it cannot be read for sure."""
    words = _words(tokens)
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    if first in ("BEGIN", "SAVEPOINT", "RELEASE", "SHOW"):
        return Step(INERT)
    if first == "START":
        return Step(INERT if second == "TRANSACTION" else CODE)
    if first in ("ROLLBACK", "ABORT"):
        return Step(SETTING, ends=second not in ("TO", "PREPARED"))
    if first == "RESET":
        return Step(SETTING)
    if first == "SET":
        return Step(CODE if "CONSTRAINTS" in words[1:3] else SETTING)
    if first in ("COMMIT", "END"):
        return Step(CODE) if second == "PREPARED" else Step(COMMIT, ends=True)
    if first == "PREPARE":
        if second == "TRANSACTION" and len(tokens) > 2 and tokens[2].kind == STRING:
            return Step(COMMIT, ends=True)
        return _prepare(tokens, text, end)
    if first == "DEALLOCATE":
        at = 2 if second == "PREPARE" and len(tokens) == 3 else 1
        if len(tokens) != at + 1:
            return None
        if words[at] == "ALL":
            return Step(INERT, "deallocate all")
        name = _name(tokens[at])
        return None if name is None else Step(INERT, "deallocate", name)
    if first == "DISCARD":
        return Step(CODE, "deallocate all") if second == "ALL" else Step(CODE)
    executes = _executes(tokens, words)
    if executes < 0:  # anything not a word first, a parenthesis say, may well be planned
        return Step(CODE, planned=not first or first in _PLANNED_WORDS)
    name = _name(tokens[executes]) if executes < len(tokens) else None
    return None if name is None else Step(CODE, "execute", name)


def _executes(tokens: list[_Token], words: list[str]) -> int:
    """Where the statement name of an EXECUTE in this statement is, or -1 if there is none:
    ``EXECUTE name``, ``EXPLAIN [options] EXECUTE name``, ``CREATE TABLE ... AS EXECUTE name``."""
    first = words[0]
    if first == "EXECUTE":
        return 1
    if first == "EXPLAIN":
        at = 1
        if at < len(tokens) and tokens[at].value == "(":
            while at < len(tokens) and not (tokens[at].value == ")" and tokens[at].depth == 0):
                at += 1
            at += 1
        while at < len(words) and words[at] in ("ANALYZE", "ANALYSE", "VERBOSE"):
            at += 1
        return at + 1 if at < len(words) and words[at] == "EXECUTE" else -1
    if first == "CREATE":
        for at in range(1, len(words) - 1):
            if words[at] == "AS" and words[at + 1] == "EXECUTE" and tokens[at].depth == 0:
                return at + 2
    return -1


def _prepare(tokens: list[_Token], text: str, end: int) -> Step | None:
    """``PREPARE name [(types)] AS statement``: the name and the statement's text."""
    if len(tokens) < 4:
        return None
    name = _name(tokens[1])
    at = 2
    if tokens[at].value == "(":
        while at < len(tokens) and not (tokens[at].value == ")" and tokens[at].depth == 0):
            at += 1
        at += 1
    if name is None or at + 1 >= len(tokens) or tokens[at].kind != WORD:
        return None
    if tokens[at].value.upper() != "AS":
        return None
    return Step(INERT, "prepare", name, text[tokens[at + 1].start : end].strip())


def _name(token: _Token) -> str | None:
    """A statement name as the server reads the identifier: unquoted folded to lower case,
    cut to 63 bytes at a character boundary; None when Witness cannot fold it for sure."""
    if token.kind == NAME:
        name = token.value
    elif token.kind == WORD and token.value.isascii():
        name = token.value.translate(_ASCII_LOWER)
    else:
        return None
    raw = name.encode()
    if len(raw) > _NAME_BYTES:
        name = raw[:_NAME_BYTES].decode("utf-8", "ignore")
    return name
