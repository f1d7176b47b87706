"""Globs over table and function names, compiled once, and how a name the text leaves
unqualified is matched against a glob that names a schema.

A name in a statement is ``schema.name`` when the text qualifies it, else just ``name``;
which schema an unqualified name means is decided by the session's search_path when the
backend runs it, which the text does not show (a hostile agent runs ``SET search_path =
billing`` and then writes ``invoices``). So a match is taken in the direction that fails
closed:

- for a rule that BLOCKS, a name matches wherever it could: ``invoices`` matches
  ``billing.*`` (it may be ``billing.invoices``), and a glob without a dot, ``invoices``,
  matches that table in every schema;
- for a rule that ALLOWS (and for the policy's own list of extra functions), a name matches
  only where it surely does: a glob with a dot matches qualified names only, and a glob
  without a dot matches unqualified names only. To allow what an agent writes unqualified,
  write the glob without a schema; to allow ``billing.invoices``, the agent must write it so.

Names and globs are compared lower-case, as the analysis gives names.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


class GlobError(ValueError):
    """A glob that cannot name a table or function (the message says why)."""


def check(glob: str) -> str:
    """``glob`` lower-cased, or GlobError: ``name`` or ``schema.name``, both non-empty."""
    text = glob.strip().lower()
    parts = text.split(".")
    if len(parts) > 2 or not all(parts):
        raise GlobError(f"expected NAME or SCHEMA.NAME (globs allowed), got {glob!r}")
    return text


def _union(globs: Iterable[str]) -> re.Pattern[str] | None:
    patterns = [fnmatch.translate(g) for g in globs]
    return re.compile("|".join(patterns)) if patterns else None


class Globs:
    """One rule's globs for one key. ``closed`` is True for a rule that blocks: a name then
    matches wherever it could (see the module's docstring)."""

    __slots__ = ("_bare", "_closed", "_qualified", "_tail", "globs")

    def __init__(self, globs: Iterable[str], *, closed: bool) -> None:
        self.globs = tuple(check(g) for g in globs)
        dotted = [g for g in self.globs if "." in g]
        self._qualified = _union(dotted)
        self._tail = _union(g.partition(".")[2] for g in dotted)
        self._bare = _union(g for g in self.globs if "." not in g)
        self._closed = closed

    def match(self, name: str) -> bool:
        """Whether ``name`` (``schema.name`` or ``name``, lower-case) matches a glob."""
        _, dot, bare = name.rpartition(".")
        if dot:
            if self._qualified is not None and self._qualified.match(name):
                return True
            return self._closed and self._bare is not None and bool(self._bare.match(bare))
        if self._bare is not None and self._bare.match(name):
            return True
        return self._closed and self._tail is not None and bool(self._tail.match(name))

    def any(self, names: Iterable[str]) -> bool:
        """Whether one of ``names`` matches."""
        return any(self.match(n) for n in names)

    def all(self, names: Iterable[str]) -> bool:
        """Whether every one of ``names`` matches."""
        return all(self.match(n) for n in names)
