"""Masking as the relay carries it out: the policy's masks, the catalogs, the token key."""

from __future__ import annotations

from typing import Any

from appliance.config import Backend
from appliance.model import Command
from appliance.policy.analysis import analyse
from appliance.policy.masking import SessionMasks, Snapshot, applies
from appliance.policy.maskrules import MaskRule
from appliance.proxy.catalog import Catalogs

_EMPTY = Snapshot()


class Masking:
    """What every relay shares for masking."""

    def __init__(self, rules: tuple[MaskRule, ...], key: bytes, catalogs: Catalogs | None = None):
        self.rules = rules
        self.key = key
        self.catalogs = catalogs or Catalogs()

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
        analysis = analyse(command.text)
        if analysis.error is not None:
            return True
        return any(
            s.category == "ddl" or s.unknown is not None or s.kind in ("do", "call", "execute")
            for s in analysis.statements
        )

    def changed(self, backend: Backend, database: str) -> None:
        self.catalogs.stale(backend, database)
