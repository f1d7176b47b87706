"""The recorder's own reads of a backend's catalog, for masking: one snapshot per database.

A result column is named by OIDs (its table's, its column number, its type's), which mean
something only in the database they come from. Each database's snapshot is read on a
connection of the recorder's own, as the backend's ``catalog_user``, once, when a session
that masks first needs it, and again (in the background, while the older one serves) when
a session meets a table it does not know, after a statement that changes the schema has
run, or once it is older than ``MAX_AGE``. Readers wait only for the first read; if it
fails, the session that asked is refused: nothing is masked on a guess.

Every name in the queries is schema-qualified: a catalog role whose search_path an agent
changed reads the same catalog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from appliance.config import Backend
from appliance.policy.masking import Column, Snapshot, Table

log = logging.getLogger(__name__)

MAX_AGE = 300.0  # seconds a snapshot serves before it is read again (in the background)
TIMEOUT = 10.0

_COLUMNS = """
select c.oid, n.nspname, c.relname, c.relkind, a.attnum, a.attname, t.typname,
       coalesce(b.typname, t.typname)
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
  join pg_catalog.pg_type t on t.oid = a.atttypid
  left join pg_catalog.pg_type b on t.typtype = 'd' and b.oid = t.typbasetype
 where c.relkind in ('r', 'v', 'm', 'p', 'f')
   and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'
"""
_TYPES = """
select t.oid, coalesce(b.typname, t.typname)
  from pg_catalog.pg_type t
  left join pg_catalog.pg_type b on t.typtype = 'd' and b.oid = t.typbasetype
"""
# The columns each view's (or rule's) definition reads.
_DEPENDS = """
select distinct r.ev_class, d.refobjid, d.refobjsubid
  from pg_catalog.pg_rewrite r
  join pg_catalog.pg_depend d
    on d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass and d.objid = r.oid
 where d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   and d.refobjsubid > 0 and d.refobjid <> r.ev_class
"""


class CatalogError(Exception):
    """A catalog could not be read; the message says which and why."""


def _password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog password: {exc.strerror}") from None
    return lines[0] if lines else ""


async def read(backend: Backend, database: str) -> Snapshot:
    """The snapshot of ``database`` on ``backend``, read as its catalog user."""
    if backend.catalog_user is None:
        raise CatalogError(f"backend {backend.name!r} has no catalog_user")
    params: dict[str, str | int] = {
        "host": backend.address,
        "port": backend.port,
        "user": backend.catalog_user,
        "dbname": database,
        "application_name": "witness-catalog",
        "connect_timeout": max(1, int(backend.connect_timeout)),
    }
    password = _password(backend.catalog_password_file)
    if password is not None:
        params["password"] = password
    try:
        conninfo = make_conninfo("", **params)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            columns = await (await conn.execute(_COLUMNS)).fetchall()
            types = await (await conn.execute(_TYPES)).fetchall()
            depends = await (await conn.execute(_DEPENDS)).fetchall()
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogError(
            f"the catalog of database {database!r} on backend {backend.name!r} cannot be read"
            f" as {backend.catalog_user!r}: {detail}"
        ) from None
    snapshot = Snapshot(types={int(oid): str(name) for oid, name in types})
    for oid, schema, name, kind, attnum, attname, typname, base in columns:
        table = snapshot.tables.get(oid)
        if table is None:
            table = snapshot.tables[oid] = Table(str(schema), str(name), str(kind))
        table.columns[int(attnum)] = Column(str(attname), str(typname), str(base))
    found: dict[int, set[tuple[int, int]]] = {}
    for view, table_oid, attnum in depends:
        found.setdefault(int(view), set()).add((int(table_oid), int(attnum)))
    snapshot.depends = {view: frozenset(pairs) for view, pairs in found.items()}
    return snapshot


@dataclass(slots=True)
class _Entry:
    snapshot: Snapshot | None = None
    read_at: float = 0.0
    task: asyncio.Task[Snapshot] | None = None


class Catalogs:
    """Every database's snapshot, shared by the sessions of every relay."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def current(self, backend: Backend, database: str) -> Snapshot | None:
        """The snapshot there is (read again in the background if old), or None."""
        entry = self._entries.get((backend.name, database))
        if entry is None or entry.snapshot is None:
            return None
        if time.monotonic() - entry.read_at > MAX_AGE:
            self.stale(backend, database)
        return entry.snapshot

    async def get(self, backend: Backend, database: str) -> Snapshot:
        """The snapshot, read first if there is none; CatalogError if it cannot be."""
        found = self.current(backend, database)
        if found is not None:
            return found
        return await self._read(backend, database)

    def stale(self, backend: Backend, database: str) -> None:
        """Read the snapshot again in the background; the older one serves meanwhile."""
        entry = self._entries.get((backend.name, database))
        if entry is None or entry.task is not None:
            return
        task = asyncio.ensure_future(self._refresh(backend, database))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, backend: Backend, database: str) -> None:
        try:
            await self._read(backend, database)
        except CatalogError as exc:
            log.warning("masking: %s (the older snapshot still serves)", exc)

    async def _read(self, backend: Backend, database: str) -> Snapshot:
        entry = self._entries.setdefault((backend.name, database), _Entry())
        if entry.task is None:
            entry.task = asyncio.ensure_future(read(backend, database))
        task = entry.task
        try:
            snapshot = await asyncio.shield(task)
        finally:
            if entry.task is task and task.done():
                entry.task = None
        entry.snapshot = snapshot
        entry.read_at = time.monotonic()
        return snapshot

    def getter(self, backend: Backend, database: str, first: Snapshot) -> _Current:
        """What a session reads its snapshot through: always the newest."""
        return _Current(self, (backend.name, database), first)


class _Current:
    __slots__ = ("_catalogs", "_first", "_key")

    def __init__(self, catalogs: Catalogs, key: tuple[str, str], first: Snapshot) -> None:
        self._catalogs = catalogs
        self._key = key
        self._first = first

    def __call__(self) -> Snapshot:
        entry = self._catalogs._entries.get(self._key)
        if entry is None or entry.snapshot is None:
            return self._first
        return entry.snapshot
