"""What a SQL text does, as PostgreSQL's own grammar reads it: the facts guardrails match.

Sans-io: a text in, an :class:`Analysis` out, cached by text, so that each distinct text is
parsed once however often it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    is True for an UPDATE or DELETE with no WHERE. ``unknown`` says why its effect cannot be
    known from the text (a DO block, dynamic SQL), or is None.
    """

    kind: str
    category: str
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    no_where: bool = False
    unknown: str | None = None
    inner: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Analysis:
    """A whole text: its statements, or why it does not parse (``error``, no statements)."""

    statements: tuple[Statement, ...]
    error: str | None = None

    @property
    def multiple(self) -> bool:
        return len(self.statements) > 1
