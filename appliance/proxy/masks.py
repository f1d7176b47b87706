"""Masking as the relay carries it out: the policy's masks, the catalogs, the token key."""

from __future__ import annotations

from typing import Any

from appliance.config import Backend
from appliance.model import Command
from appliance.policy.analysis import analyse
from appliance.policy.masking import SessionMasks, Snapshot, applies
from appliance.policy.maskrules import MaskRule
from appliance.policy.shape import shape
from appliance.policy.sqlkinds import category_of
from appliance.proxy.catalog import Catalogs

_EMPTY = Snapshot()
SHAPES_KEPT = 8192
# Kinds that make tables (CREATE TABLE AS is a write), or run what is not known here.
_CHANGES = frozenset(("create_table_as", "select_into", "do", "call", "execute"))


class Masking:
    """What every relay shares for masking."""

    def __init__(self, rules: tuple[MaskRule, ...], key: bytes, catalogs: Catalogs | None = None):
        self.rules = rules
        self.key = key
        self.catalogs = catalogs or Catalogs()
        # Whether a text may change the schema, by its shape (texts that differ only in
        # their literals' values do the same), unless a literal's value decided it.
        self._schema_shapes: dict[str, bool] = {}

    def rules_for(
        self, identity: dict[str, Any] | None, backend: str, database: str | None
    ) -> tuple[MaskRule, ...]:
        return tuple(r for r in self.rules if applies(r, identity, backend, database))

    async def session(
        self, rules: tuple[MaskRule, ...], backend: Backend, database: str
    ) -> SessionMasks:
        """One session's masks, once its database's catalog is read (CatalogError if it
        cannot be, when a mask names columns)."""
        if not any(r.by_column for r in rules):
            return SessionMasks(rules, lambda: _EMPTY, self.key)
        catalogs = self.catalogs
        first = await catalogs.get(backend, database)
        return SessionMasks(
            rules,
            catalogs.getter(backend, database, first),
            self.key,
            lambda: catalogs.stale(backend, database),
        )

    def changes_schema(self, command: Command) -> bool:
        """Whether ``command`` may change what the catalog says (DDL, or what cannot be
        known): the snapshot is read again once it has run."""
        if command.kind == "function_call" or not command.text_known:
            return True
        text = command.text
        form = shape(text)
        known = self._schema_shapes.get(form) if form is not None else None
        if known is not None:
            return known
        analysis = analyse(text)
        if analysis.error is not None:
            return True
        changes = any(
            s.unknown is not None
            or any(category_of(k) == "ddl" or k in _CHANGES for k in (s.kind, *s.inner))
            for s in analysis.statements
        )
        if form is not None and not any(s.by_value for s in analysis.statements):
            if len(self._schema_shapes) >= SHAPES_KEPT:
                self._schema_shapes.clear()
            self._schema_shapes[form] = changes
        return changes

    def changed(self, backend: Backend, database: str) -> None:
        self.catalogs.stale(backend, database)
