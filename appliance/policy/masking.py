"""Masking: which result columns a session's rules cover, and what a covered value becomes.

Sans-io and pure. The catalog of a database (:class:`Snapshot`: each table's schema, name and
columns with their types, and the views built on them) is read elsewhere, on the recorder's
own connection (:mod:`appliance.proxy.catalog`); here it is only looked up. A result column
is known by what PostgreSQL's RowDescription says of it: the table it comes from and its
column number there (an alias keeps them), its type, and its format.

What is never passed in the clear (fail closed):

- a column of a table the snapshot does not know (created since it was read): every such
  column is masked, as if a rule covered it, until the snapshot is read again;
- a result whose columns are not known at all (an Execute no Describe told the shape of):
  every column is masked.

A masked value is a fixed mark (``redact``), the last characters behind a fixed prefix
(``partial``), or a keyed HMAC-SHA256 token (``token``, stable, for joins in the trail); it
is never the value, nor a plain hash of it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import importlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.model import Command
from appliance.policy import maskguard, maskwrites
from appliance.policy.globs import Globs
from appliance.policy.maskguard import CopyOut, Masked
from appliance.policy.maskrules import MaskRule
from appliance.policy.shape import shape

# Types whose values are strings in either format: a mask can stand in their place.
STRING_TYPES = frozenset(("text", "varchar", "bpchar", "name", "citext", "char"))
BYTEA = "bytea"
UNRESOLVED = "[masked]"  # what a column whose origin cannot be known reads
PARTIAL_PREFIX = "***"
TOKEN_PREFIX = "tok_"  # noqa: S105 (a token's prefix, no secret)
TOKEN_HEX = 16  # 64 bits of the HMAC: a join key, not a proof

# Built-in type OIDs (fixed in every PostgreSQL database), so the usual result needs no
# catalog read for its types.
BUILTIN_TYPES = {
    16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 23: "int4",
    25: "text", 26: "oid", 114: "json", 142: "xml", 700: "float4", 701: "float8",
    1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp",
    1184: "timestamptz", 1186: "interval", 1700: "numeric", 2950: "uuid", 3802: "jsonb",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    """One column of a RowDescription: ``table`` and ``column`` are 0 when it is computed."""

    name: str
    table: int
    column: int
    type: int
    format: int


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # the type's name (a domain: its own)
    base: str  # a domain's base type's name; else the same as ``type``


@dataclass(slots=True)
class Table:
    schema: str
    name: str
    kind: str  # pg_class.relkind: r, v, m, p, f
    columns: dict[int, Column] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}".lower()


@dataclass(slots=True)
class Snapshot:
    """One database's catalog as the masking needs it, read at one moment."""

    tables: dict[int, Table] = field(default_factory=dict)
    types: dict[int, str] = field(default_factory=dict)
    # A view -> the (table, column) pairs its definition reads, from pg_depend.
    depends: dict[int, frozenset[tuple[int, int]]] = field(default_factory=dict)

    def type_name(self, oid: int) -> str | None:
        return BUILTIN_TYPES.get(oid) or self.types.get(oid)

    def by_name(self, name: str) -> list[Table]:
        """The tables ``name`` (``schema.table`` or ``table``, lower-case) may mean."""
        schema, dot, bare = name.rpartition(".")
        return [
            t
            for t in self.tables.values()
            if t.name.lower() == bare and (not dot or t.schema.lower() == schema)
        ]


@dataclass(frozen=True, slots=True)
class Cell:
    """How one result column is masked: by a column ``rule``, or (rule None) by content only
    (``scan``), or, both None, because its origin is not known (``UNRESOLVED``)."""

    rule: MaskRule | None
    type: str | None  # the column's type name (its base type's, for a domain)
    wire: bool
    trail: bool
    scan: Any = None  # a detectors.Scanner, for masks by content

    @property
    def binary_ok(self) -> bool:
        """Whether the column can be masked when it is sent in binary format."""
        return self.type in STRING_TYPES or self.type == BYTEA


Plan = tuple[Cell | None, ...]


@dataclass(frozen=True, slots=True)
class Recorded:
    """A command's text as the trail keeps it, its masked parameters (1-based number ->
    masked value), and the clear values taken out (for the server's errors to be scrubbed
    of them)."""

    text: str
    params: dict[int, str]
    clear: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """A COPY TO STDOUT's columns, each masked or not; ``everything``: the table is not
    known, so every field is masked."""

    copy: CopyOut
    cells: tuple[Cell | None, ...]
    everything: bool = False


class _Compiled:
    __slots__ = ("columns", "rule", "tables", "types")

    def __init__(self, rule: MaskRule) -> None:
        self.rule = rule
        self.tables = Globs(rule.tables, closed=True) if rule.tables else None
        self.columns = (
            re.compile("|".join(fnmatch.translate(c) for c in rule.columns))
            if rule.columns
            else None
        )
        self.types = frozenset(rule.types) if rule.types else None

    def covers(self, table: Table, column: Column) -> bool:
        if self.tables is not None and not self.tables.match(table.qualified):
            return False
        if self.columns is not None and not self.columns.match(column.name.lower()):
            return False
        return self.types is None or column.type in self.types or column.base in self.types


def applies(rule: MaskRule, identity: dict[str, Any] | None, backend: str, db: str | None) -> bool:
    """Whether ``rule`` masks what ``identity`` gets from ``db`` on ``backend``. A session
    with no identity meets no identity key, and no exemption."""
    if rule.backends and backend not in rule.backends:
        return False
    if rule.databases and db not in rule.databases:
        return False
    subject = email = None
    groups: tuple[str, ...] = ()
    if identity is not None:
        subject = identity.get("subject")
        found = identity.get("email")
        email = found.casefold() if isinstance(found, str) else None
        held = identity.get("groups")
        if isinstance(held, list | tuple):
            groups = tuple(g for g in held if isinstance(g, str))
    if subject is not None and subject in rule.except_subjects:
        return False
    if email is not None and email in (e.casefold() for e in rule.except_emails):
        return False
    if any(g in rule.except_groups for g in groups):
        return False
    if not (rule.subjects or rule.emails or rule.groups):
        return True
    if identity is None:
        return False
    return (
        (subject is not None and subject in rule.subjects)
        or (email is not None and email in (e.casefold() for e in rule.emails))
        or any(g in rule.groups for g in groups)
    )


def token(key: bytes, value: bytes) -> str:
    """The stable token of ``value``: keyed, so it cannot be reversed by hashing guesses."""
    return TOKEN_PREFIX + hmac.new(key, value, hashlib.sha256).hexdigest()[:TOKEN_HEX]


def masked_text(rule: MaskRule | None, value: str, key: bytes) -> str:
    """What ``value`` becomes under ``rule`` (None: a column of unknown origin)."""
    if rule is None:
        return UNRESOLVED
    if rule.method == "token":
        return token(key, value.encode("utf-8", "surrogatepass"))
    if rule.method == "partial":
        keep = rule.keep
        return PARTIAL_PREFIX + value[-keep:] if len(value) >= 2 * keep else PARTIAL_PREFIX
    return rule.label


Scanner = Any  # detectors.Scanner, imported only where content rules exist
MakeScanner = Callable[[Sequence[str], Sequence[tuple[str, str]]], Scanner]


def _scanner(rule: MaskRule) -> Scanner:
    detectors: Any = importlib.import_module("appliance.policy.detectors")
    return detectors.Scanner(rule.detectors, rule.patterns)


class SessionMasks:
    """The masks that apply to one session (who, which backend, which database), over its
    database's snapshot, and the token key. ``catalog`` gives the newest snapshot; ``stale``
    asks for a new one (a table the snapshot does not know was met)."""

    def __init__(
        self,
        rules: Sequence[MaskRule],
        catalog: Callable[[], Snapshot],
        key: bytes,
        stale: Callable[[], None] = lambda: None,
    ) -> None:
        self.rules = tuple(rules)
        self._columns = tuple(_Compiled(r) for r in self.rules if r.by_column and not r.by_content)
        self._content = tuple(
            (r, _Compiled(r) if r.by_column else None, _scanner(r))
            for r in self.rules
            if r.by_content
        )
        self._catalog = catalog
        self.key = key
        self._stale = stale
        self.wire = any(r.wire for r in self.rules)
        self.trail = any(r.trail for r in self.rules)
        self._plans: dict[tuple[Field, ...], Plan | None] = {}
        self._seen: Snapshot | None = None
        self._masked: tuple[Snapshot, Masked] | None = None
        # Refusals by the shapes of the texts (and binary or not), for texts whose refusal
        # no literal's value can change (see maskguard.literal_free), per Masked.
        self._refusals: dict[tuple[tuple[str | None, ...], bool], str | None] = {}
        self._refusals_of: Masked | None = None
        # The trail: column rules whose values a command's own text may carry (by shape:
        # False for texts that carry none), and content rules for every literal.
        self._trail_columns = any(r.trail for r in self.rules if r.by_column and not r.by_content)
        self._trail_content = tuple(
            scan for rule, compiled, scan in self._content if rule.trail and compiled is None
        )
        self._carries: dict[str, bool] = {}
        self._carries_of: Masked | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._catalog()

    def covered(self, table: Table, column: Column) -> MaskRule | None:
        """The first column rule that covers ``column`` of ``table``, or None."""
        for compiled in self._columns:
            if compiled.covers(table, column):
                return compiled.rule
        return None

    def plan(self, fields: Sequence[Field]) -> Plan | None:
        """How each column of a result is masked, or None if no column is."""
        snapshot = self.snapshot
        if snapshot is not self._seen:  # read again: plans may differ
            self._plans.clear()
            self._seen = snapshot
        key = tuple(fields)
        if key in self._plans:
            return self._plans[key]
        cells: list[Cell | None] = []
        unknown = False
        for f in fields:
            cell, missing = self._cell(snapshot, f)
            unknown = unknown or missing
            cells.append(cell)
        plan = tuple(cells) if any(c is not None for c in cells) else None
        if unknown:
            self._stale()  # not cached: the next result may be known
        else:
            if len(self._plans) > 4096:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _cell(self, snapshot: Snapshot, f: Field) -> tuple[Cell | None, bool]:
        type_name = snapshot.type_name(f.type)
        if f.table and self._columns:
            table = snapshot.tables.get(f.table)
            column = None if table is None else table.columns.get(f.column)
            if table is None or column is None:
                return Cell(None, type_name, wire=self.wire, trail=self.trail), True
            rule = self.covered(table, column)
            if rule is not None:
                return Cell(rule, column.base, wire=rule.wire, trail=rule.trail), False
            return self._content_cell(column.base, table, column), False
        return self._content_cell(type_name, None, None), False

    def _content_cell(
        self, type_name: str | None, table: Table | None, column: Column | None
    ) -> Cell | None:
        """The first content rule for the column: one that names columns applies to those
        only (and to no computed column)."""
        for rule, compiled, scan in self._content:
            if compiled is not None and (
                table is None or column is None or not compiled.covers(table, column)
            ):
                continue
            return Cell(None, type_name, wire=rule.wire, trail=rule.trail, scan=scan)
        return None

    # --- the decision point -----------------------------------------------------------

    def masked(self) -> Masked:
        """What the masks cover, by name, in the newest snapshot (see :mod:`.maskguard`)."""
        snapshot = self.snapshot
        if self._masked is not None and self._masked[0] is snapshot:
            return self._masked[1]
        tables: dict[str, dict[str, str]] = {}
        pairs: set[tuple[int, int]] = set()
        for oid, table in snapshot.tables.items():
            for attnum, column in table.columns.items():
                if self.covered(table, column) is not None:
                    pairs.add((oid, attnum))
                    for name in (table.name.lower(), table.qualified):
                        tables.setdefault(name, {})[column.name.lower()] = column.base
        views: set[int] = set()
        grew = True
        while grew:  # views over views over masked columns
            grew = False
            for view, reads in snapshot.depends.items():
                if view not in views and not reads.isdisjoint(pairs):
                    views.add(view)
                    over = snapshot.tables.get(view)
                    if over is not None:
                        pairs.update((view, attnum) for attnum in over.columns)
                    grew = True
        names: set[str] = set()
        for view in views:
            found_view = snapshot.tables.get(view)
            if found_view is not None:
                names.update((found_view.name.lower(), found_view.qualified))
        found = Masked(tables, frozenset(names))
        self._masked = (snapshot, found)
        return found

    def refusal(self, command: Command, formats: Sequence[int]) -> str | None:
        """Why ``command`` may not run in this session, or None (see :mod:`.maskguard`)."""
        if not self._columns:
            return None
        if command.kind == "cancel":
            return None
        if command.kind == "function_call":
            return "a fast-path function call may read masked columns"
        if not command.text_known:
            return "the text the backend runs is not known, so masked columns may be read"
        binary = any(f == 1 for f in formats)
        masked = self.masked()
        if not masked.tables:
            return None
        texts = [command.text]
        texts += [p.text for p in command.prepared if p.kind == "statement" and p.text]
        if masked is not self._refusals_of:  # a new snapshot: refusals may differ
            self._refusals.clear()
            self._refusals_of = masked
        shapes = tuple(shape(t) for t in texts)
        key = (shapes, binary) if all(shapes) else None
        if key is not None and key in self._refusals:
            return self._refusals[key]
        why = None
        by_shape = key is not None
        for text in texts:
            found = maskguard.refusal(text, masked, binary)
            by_shape = by_shape and maskguard.literal_free(text)
            if found is not None:
                why = found
                break
        if key is not None and by_shape:
            if len(self._refusals) > 4096:
                self._refusals.clear()
            self._refusals[key] = why
        return why

    def copy_plan(self, text: str) -> CopyPlan | None:
        """How a COPY TO STDOUT's rows are masked, or None if none of its columns is."""
        out = maskguard.copy_out(text)
        if out is None:
            return None
        tables = self.snapshot.by_name(
            out.relname if out.schema is None else f"{out.schema}.{out.relname}".lower()
        )
        if not tables:
            return CopyPlan(out, (), everything=True)
        order = out.columns or tuple(
            c.name.lower()
            for _, c in sorted(max(tables, key=lambda t: len(t.columns)).columns.items())
        )
        cells: list[Cell | None] = []
        for name in order:
            cell = None
            for table in tables:
                column = next((c for c in table.columns.values() if c.name.lower() == name), None)
                if column is None:
                    continue
                rule = self.covered(table, column)
                if rule is not None and rule.wire:
                    cell = Cell(rule, column.base, wire=True, trail=rule.trail)
                    break
                found = self._content_cell(column.base, table, column)
                if found is not None and found.wire:
                    cell = found
            cells.append(cell)
        if not any(cells):
            return None
        return CopyPlan(out, tuple(cells))

    def unknown_plan(self, count: int) -> Plan:
        """Every column masked: a result whose columns are not known."""
        cell = Cell(None, None, wire=self.wire, trail=self.trail)
        return (cell,) * count

    # --- the command's own record ------------------------------------------------------

    def recorded(self, text: str, params: Sequence[str | None]) -> Recorded | None:
        """The command as the trail keeps it (None: as it is): the values of masked columns
        (trail scope) that its literals and parameters carry, masked; with content rules,
        what they find in any literal or parameter."""
        taken = _Taken()
        if self._trail_columns:
            self._columns_carried(text, params, taken)
        for scan in self._trail_content:
            for token in maskwrites.literals(text):
                if (token.start, token.end) not in taken.spans:
                    found = scan.redact(token.value, _content_mark)
                    if found is not None:
                        taken.literal(token.start, token.end, found, token.value)
            for number, value in enumerate(params, 1):
                if value is not None and number not in taken.params:
                    found = scan.redact(value, _content_mark)
                    if found is not None:
                        taken.param(number, found, value)
        return taken.recorded(text)

    def _columns_carried(self, text: str, params: Sequence[str | None], taken: _Taken) -> None:
        masked = self.masked()
        if not masked.tables:
            return
        if masked is not self._carries_of:
            self._carries.clear()
            self._carries_of = masked
        form = shape(text)
        if form is not None and self._carries.get(form) is False:
            return
        found = maskwrites.carried(text, masked, self._order)
        if form is not None and found is not None:
            if len(self._carries) > 4096:
                self._carries.clear()
            self._carries[form] = bool(found)
        if found is None:  # no tree says which: every literal and parameter is masked
            taken.everything(text, params)
            return
        for item in found:
            rule = self._rule_named(item.table, item.column)
            if rule is None or not rule.trail:
                continue
            if item.param:
                value = params[item.param - 1] if item.param <= len(params) else None
                if value is not None:
                    taken.param(item.param, masked_text(rule, value, self.key), value)
            else:
                hidden = masked_text(rule, item.value, self.key)
                taken.literal(item.start, item.end, hidden, item.value)

    def carries_params(self, text: str) -> bool:
        """Whether ``text`` puts a parameter in a masked column (trail scope)."""
        if not self._trail_columns:
            return False
        masked = self.masked()
        found = maskwrites.carried(text, masked, self._order) if masked.tables else ()
        if found is None:
            return True
        for item in found:
            rule = self._rule_named(item.table, item.column) if item.param else None
            if rule is not None and rule.trail:
                return True
        return False

    def _order(self, relname: str, schema: str | None) -> list[str] | None:
        """The columns of the table ``relname`` names, in their order (None: not one
        order)."""
        name = relname.lower() if schema is None else f"{schema}.{relname}".lower()
        orders = {
            tuple(c.name.lower() for _, c in sorted(t.columns.items()))
            for t in self.snapshot.by_name(name)
        }
        return list(orders.pop()) if len(orders) == 1 else None

    def _rule_named(self, relname: str, column: str) -> MaskRule | None:
        """The rule that covers ``column`` of a table ``relname`` names (the first of any
        schema's)."""
        for table in self.snapshot.by_name(relname.lower()):
            for col in table.columns.values():
                if col.name.lower() == column:
                    rule = self.covered(table, col)
                    if rule is not None:
                        return rule
        return None

    # --- values --------------------------------------------------------------------------

    def text(self, cell: Cell, value: str) -> str | None:
        """The masked form of a value as text (None: unchanged, content found nothing)."""
        if cell.scan is not None:
            out: str | None = cell.scan.redact(value, _content_mark)
            return out
        return masked_text(cell.rule, value, self.key)

    def trail_value(
        self, cell: Cell, shown: str | None, raw: bytes | None, fmt: int, codec: Any
    ) -> str | None:
        """What the trail keeps of a captured value (``shown`` as the capture shows it,
        ``raw`` as it came in format ``fmt``): masked as the wire masks it."""
        if shown is None or raw is None or not cell.trail:
            return shown
        return self.trail_shown(
            cell, shown, raw, self.wire_value(cell, raw, fmt, codec), fmt, codec
        )

    def trail_shown(  # noqa: PLR0917 - a value in each of its forms
        self,
        cell: Cell,
        shown: str | None,
        raw: bytes | None,
        masked: bytes | None,
        fmt: int,
        codec: Any,
    ) -> str | None:
        """What the trail keeps of a captured value whose masked form (as the wire sends
        it) is already known: ``masked``."""
        if shown is None or raw is None or not cell.trail:
            return shown
        if masked == raw:
            return shown
        if masked is None:  # a binary value no mask stands in for
            return UNRESOLVED if cell.rule is None else masked_text(cell.rule, "", self.key)
        if fmt != 0 and cell.type == BYTEA:
            return "\\x" + masked.hex()
        return codec.show(masked) if fmt == 0 or cell.type in STRING_TYPES else shown

    def wire_value(self, cell: Cell, raw: bytes, fmt: int, codec: Any) -> bytes | None:
        """What the client gets in place of ``raw`` (a non-NULL value in format ``fmt``,
        in the client encoding ``codec``); None sends NULL: a binary value of a type no
        mask can stand in for, whose command could not be refused before it ran."""
        kind = cell.type
        if kind == BYTEA:
            if cell.scan is not None:
                return raw
            value = raw
            if fmt == 0 and raw.startswith(b"\\x"):
                try:
                    value = bytes.fromhex(raw[2:].decode("ascii"))
                except ValueError:
                    value = raw
            mark = masked_text(cell.rule, value.hex(), self.key).encode("utf-8")
            return b"\\x" + mark.hex().encode("ascii") if fmt == 0 else mark
        if fmt != 0 and kind not in STRING_TYPES:
            return None if cell.scan is None else raw
        text = codec.text(raw)
        if text is None:  # not readable in its encoding, so not scanned: nothing of it goes
            rule = cell.rule if cell.scan is None else None
            return _encode(masked_text(rule, "", self.key), codec)
        masked = self.text(cell, text)
        if masked is None:
            return raw
        return _encode(masked, codec)


class _Taken:
    """What a command's record keeps in place of the values it carries: literal spans of
    its text and parameters (1-based), each with its masked value; and the clear values."""

    def __init__(self) -> None:
        self.spans: dict[tuple[int, int], str] = {}
        self.params: dict[int, str] = {}
        self.clear: list[str] = []

    def literal(self, start: int, end: int, masked: str, value: str) -> None:
        self.spans[(start, end)] = masked
        self.clear.append(value)

    def param(self, number: int, masked: str, value: str) -> None:
        self.params[number] = masked
        self.clear.append(value)

    def everything(self, text: str, params: Sequence[str | None]) -> None:
        """Every literal and parameter masked: where no tree says which carry masked values."""
        for token in maskwrites.literals(text):
            self.literal(token.start, token.end, UNRESOLVED, token.value)
        for number, value in enumerate(params, 1):
            if value is not None:
                self.param(number, UNRESOLVED, value)

    def recorded(self, text: str) -> Recorded | None:
        """The text with each span replaced by a string literal of its masked value."""
        if not self.spans and not self.params:
            return None
        out, at = [], 0
        for (start, end), value in sorted(self.spans.items()):
            out += [text[at:start], "'" + value.replace("'", "''") + "'"]
            at = end
        out.append(text[at:])
        return Recorded("".join(out), self.params, tuple(self.clear))


def withheld(text: str, params: Sequence[str | None]) -> Recorded | None:
    """The command with every literal and parameter masked: where no mask says which of
    them carry masked values (an EXECUTE of a statement that masks its parameters; a
    command of a session refused before its masks were known)."""
    taken = _Taken()
    taken.everything(text, params)
    return taken.recorded(text)


def _content_mark(found: Any, text: str) -> str:
    return f"[masked:{found.kind}]"


def _encode(text: str, codec: Any) -> bytes:
    """``text`` in the client's encoding; a mark alone where it cannot be said in it."""
    try:
        return text.encode(codec.python or "ascii")
    except (UnicodeEncodeError, LookupError):
        return UNRESOLVED.encode("ascii")


def rebuild_row(values: Iterable[bytes | None]) -> bytes:
    """A DataRow's body from its values (None is NULL)."""
    parts: list[bytes] = []
    count = 0
    for value in values:
        count += 1
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(len(value).to_bytes(4, "big"))
            parts.append(value)
    return count.to_bytes(2, "big") + b"".join(parts)
