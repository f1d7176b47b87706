"""What a SQL text does, as PostgreSQL's own grammar reads it: the facts guardrails match.

Sans-io: a text in, an :class:`Analysis` out, cached by text, so that each distinct text is
parsed once however often it is sent. The grammar is PostgreSQL's (libpg_query, through
pgparse), so comments, dollar quoting, quoted or Unicode-escaped identifiers and semicolons
inside strings hide nothing: the tree is what the server will execute. The tree is then
walked once, iteratively, to collect what the statements touch (see
:mod:`appliance.policy.sqlwalk`); kinds and categories are named in
:mod:`appliance.policy.sqlkinds`.

:func:`analyse` never raises. A text the grammar refuses, or one that cannot be analysed
safely, gives an :class:`Analysis` with no statements and an ``error`` that says why.

The parser recurses in C once per level of the tree, and a left-associative chain
(``1+1+1+...``) makes a tree as deep as the text is long: a few hundred kilobytes of it
overflow an ordinary thread's stack and kill the process. Short texts cannot nest that deep
and are parsed where the caller runs; longer ones are parsed on a thread whose stack is
sized for the text's length, and texts too long for any such stack are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from dataclasses import dataclass
from typing import Any

import pgparse

from appliance.policy.sqlkinds import category_of, kind_of
from appliance.policy.sqlwalk import Facts, walk


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a text.

    ``kind`` names what it is (``select``, ``insert``, ``update``, ``delete``, ``merge``,
    ``truncate``, ``copy_from``, ``copy_to``, ``copy_program``, ``do``, ``call``, ``grant``,
    ``revoke``, ``set_role``, ``set_session_authorization``, ``alter_system``, ``lock``, one
    kind per DDL statement such as ``create_table`` or ``drop_index``, ``begin``,
    ``commit``, ...); ``category`` groups kinds (``read``, ``write``, ``ddl``, ...).

    ``reads`` and ``writes`` are the tables it names, lower-cased, schema-qualified where
    the text qualifies them; ``functions`` the functions it calls, likewise. ``no_where``
    is True when an UPDATE or DELETE that will run, at the top or nested, has no WHERE or
    one that refers to no column (``WHERE 1=1``). ``unknown`` says why its effect cannot be
    known from the text (a DO block, dynamic SQL), or is None.

    ``inner`` holds the kinds of the statements nested inside this one that will run and
    are not plain reads: a DELETE in a CTE of a SELECT, the statement of EXPLAIN ANALYZE, of
    CREATE TABLE AS, of COPY (...) TO, of PREPARE. A rule that blocks a kind should match
    ``kind`` or ``inner``.
    """

    kind: str
    category: str
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    no_where: bool = False
    unknown: str | None = None
    inner: frozenset[str] = frozenset()
    by_value: bool = False  # a literal's value decided a fact (EXPLAIN's ANALYZE 1, 'off')


@dataclass(frozen=True, slots=True)
class Analysis:
    """A whole text: its statements, or why it does not parse (``error``, no statements)."""

    statements: tuple[Statement, ...]
    error: str | None = None

    @property
    def multiple(self) -> bool:
        return len(self.statements) > 1


# The grammar reads strings as PostgreSQL does with standard_conforming_strings on. A session
# can turn it off, and then a backslash before a quote escapes it and the string goes on:
# ``SELECT '\' , '; DELETE FROM t; --'`` is two strings here and a DELETE there. Only a
# backslash directly before a quote can move where a string ends, so a text with none is read
# the same either way; one with any is marked unknown.
BACKSLASH_QUOTE = "\\'"
AMBIGUOUS_QUOTES = (
    "a backslash before a quote ends a string here but not when standard_conforming_strings is off"
)

# Texts up to this many characters are parsed on the caller's thread: at most about half as
# many tree levels as characters, far less than any thread's stack holds.
DIRECT_MAX = 4096
# C stack the parser may use per character of text: measured at about 50 bytes, with room.
STACK_PER_CHAR = 256
STACK_BASE = 32 << 20
STACK_MAX = 1 << 30
# The cache holds up to 8192 texts of up to this many characters (64 MiB at most, however
# many distinct texts an agent sends); longer ones share a cache of a few.
CACHED_MAX = 8 << 10

_stack_lock = threading.Lock()


def analyse(text: str) -> Analysis:
    """What ``text`` does; never raises."""
    if len(text) <= CACHED_MAX:
        return _analyse_common(text)
    return _analyse_long(text)


@functools.lru_cache(maxsize=8192)
def _analyse_common(text: str) -> Analysis:
    return _analyse(text)


@functools.lru_cache(maxsize=8)
def _analyse_long(text: str) -> Analysis:
    return _analyse(text)


def _analyse(text: str) -> Analysis:
    refusal = _refuse(text)
    if refusal is not None:
        return Analysis((), error=refusal)
    try:
        tree = _parse(text)
    except pgparse.PGQueryError as exc:
        return Analysis((), error=f"{exc.message} (at position {exc.position})")
    except RecursionError:
        return Analysis((), error="the statement is nested too deeply to analyse")
    except Exception as exc:
        return Analysis((), error=f"the text could not be analysed ({type(exc).__name__})")
    try:
        statements = tuple(_statement(raw.get("stmt")) for raw in tree)
    except Exception as exc:  # a tree of a shape this module does not expect
        return Analysis((), error=f"the parse tree could not be analysed ({type(exc).__name__})")
    if BACKSLASH_QUOTE in text:
        statements = tuple(
            s if s.unknown else dataclasses.replace(s, unknown=AMBIGUOUS_QUOTES) for s in statements
        )
    return Analysis(statements)


def _refuse(text: str) -> str | None:
    """Why a text is not given to the parser at all, or None."""
    nul = text.find("\0")
    if nul >= 0:
        # The parser would stop at the NUL and see only the text before it; the server
        # refuses such a query outright, so there is nothing to analyse.
        return f"the text holds a NUL character (at position {nul + 1})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"the text is not valid Unicode (a lone surrogate at position {exc.start + 1})"
    if STACK_BASE + len(text) * STACK_PER_CHAR > STACK_MAX:
        return f"the text is too long to analyse ({len(text)} characters)"
    return None


def _parse(text: str) -> list[dict[str, Any]]:
    if len(text) <= DIRECT_MAX:
        result: list[dict[str, Any]] = pgparse.parse(text)
        return result
    return _parse_on_own_stack(text, STACK_BASE + len(text) * STACK_PER_CHAR)


def _parse_on_own_stack(text: str, stack: int) -> list[dict[str, Any]]:
    """Parse on a new thread whose stack holds the deepest tree ``text`` can make."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(pgparse.parse(text))
        except BaseException as exc:
            outcome.append(exc)

    with _stack_lock:
        # stack_size applies to threads started after it; other threads started meanwhile
        # get the larger stack too, which costs them only address space.
        previous = threading.stack_size(stack)
        try:
            worker = threading.Thread(target=run, name="sql-analysis", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    if not outcome:
        raise RuntimeError("the parser thread ended without an answer")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    parsed: list[dict[str, Any]] = outcome[0]
    return parsed


def _statement(wrapper: object) -> Statement:
    if not isinstance(wrapper, dict) or len(wrapper) != 1:
        return Statement("other", "other")
    ((node, fields),) = wrapper.items()
    if not isinstance(fields, dict):
        return Statement("other", "other")
    kind = kind_of(node, fields)
    facts = Facts()
    walk(wrapper, fields, facts)
    category = category_of(kind)
    inner = frozenset(facts.inner)
    if category == "read" and any(category_of(k) == "write" for k in inner):
        category = "write"
    return Statement(
        kind=kind,
        category=category,
        reads=frozenset(facts.reads),
        writes=frozenset(facts.writes),
        functions=frozenset(facts.functions),
        no_where=facts.no_where,
        unknown=facts.unknown,
        inner=inner,
        by_value=facts.by_value,
    )
