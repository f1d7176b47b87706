"""The ways around masking, closed at the decision point: what a masked session may do with
a masked table, read in PostgreSQL's own parse tree.

The wire can mask a column only where PostgreSQL says which table column a result column
is (RowDescription); a computed column (``upper(ssn)``, ``ssn || ''``, ``ssn::text``, a
whole row as JSON, a column of a view or subquery that computes it) has no origin, and a
statement can also leak a value without returning it (``WHERE ssn LIKE '123%'`` is an
oracle; ``CREATE TABLE ... AS``, ``INSERT ... SELECT`` and ``COPY ... TO`` a file copy it
somewhere unmasked). So a statement that names a masked table is allowed only if every
reference that may reach a masked column is a plain column of the top-level SELECT's
target list (``ssn``, ``p.ssn``, ``*``, ``p.*``), and it is a SELECT, a write that reads no
masked column (``RETURNING`` included), or a ``COPY table TO STDOUT`` in text or CSV
format, which the wire masks. Everything else that names a masked table is refused:
DDL on it, views, ``SELECT INTO``, ``DECLARE CURSOR``, set operations, sorting, grouping or
filtering by a masked column. A view whose definition reads a masked column is refused
outright. A text that cannot be analysed is refused too.

The match is by name, and fails closed: a masked column's name counts wherever it appears
in a statement that names a masked table (a same-named column of another table included),
and an unqualified table name matches the table in every schema.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pgparse

from appliance.policy.sqlkinds import kind_of

Node = dict[str, Any]

# Statements whose bodies run later, unseen by the decision point (a trigger fires on
# another statement): in a session with column masks, none is made.
_CODE = frozenset(
    (
        "create_function",
        "create_procedure",
        "create_trigger",
        "create_event_trigger",
        "create_rule",
        "create_aggregate",
        "create_operator",
        "create_cast",
    )
)
# The planner's statistics: sampled values of every column of every table.
_STATISTICS = frozenset(
    ("pg_stats", "pg_statistic", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic_ext_data")
)
# Kinds a statement that names a masked table may have (subject to the column check).
_ALLOWED = frozenset(
    ("select", "insert", "update", "delete", "merge", "copy_to", "copy_from", "truncate", "lock")
)


@dataclass(frozen=True, slots=True)
class Masked:
    """What a session's masks cover, by name: table name (``name`` and ``schema.name``,
    lower-case) -> its masked columns (name -> type), and the views refused outright."""

    tables: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    views: frozenset[str] = frozenset()

    def table(self, relname: str, schema: str | None) -> Mapping[str, str] | None:
        name = relname.lower() if schema is None else f"{schema}.{relname}".lower()
        return self.tables.get(name)

    def view(self, relname: str, schema: str | None) -> bool:
        name = relname.lower() if schema is None else f"{schema}.{relname}".lower()
        return name in self.views


@dataclass(frozen=True, slots=True)
class CopyOut:
    """A ``COPY table TO STDOUT`` of a masked table: its name, the columns it sends (empty:
    all), and its options."""

    relname: str
    schema: str | None
    columns: tuple[str, ...]
    csv: bool
    binary: bool
    delimiter: str
    null: str
    header: bool
    quote: str
    escape: str


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> tuple[Node, ...] | str:
    try:
        return tuple(entry.get("stmt", {}) for entry in pgparse.parse(text))
    except pgparse.PGQueryError as exc:
        return f"the text does not parse ({exc.message})"
    except Exception as exc:  # a tree too deep, say
        return f"the text cannot be analysed ({type(exc).__name__})"


def nodes(root: Any) -> Iterator[Node]:
    """Every dict node in the tree, iteratively."""
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(node)


def _ranges(stmt: Node) -> list[Node]:
    return [node for node in nodes(stmt) if isinstance(node.get("relname"), str)]


def column_names(fields: list[Any]) -> list[str | None]:
    """A ColumnRef's fields: names, and None for ``*``."""
    out: list[str | None] = []
    for item in fields:
        if isinstance(item, dict) and "String" in item:
            out.append(str(item["String"].get("sval", "")).lower())
        else:
            out.append(None)
    return out


def plain_targets(stmt: Node) -> set[int]:
    """The ColumnRef nodes (by id) that stand as whole items of the top-level SELECT's
    target list: the only places a masked column may be named."""
    inner = stmt.get("PrepareStmt", {}).get("query") if "PrepareStmt" in stmt else None
    select = (inner or stmt).get("SelectStmt")
    if not isinstance(select, dict):
        return set()
    if select.get("op", "SETOP_NONE") != "SETOP_NONE" or select.get("intoClause"):
        return set()
    if select.get("withClause"):
        return set()
    out = set()
    for target in select.get("targetList", []):
        val = target.get("ResTarget", {}).get("val", {})
        if "ColumnRef" in val:
            out.add(id(val["ColumnRef"]))
    return out


def refusal(text: str, masked: Masked, binary: bool = False) -> str | None:
    """Why ``text`` may not run in a masked session, or None. ``binary``: it asks for
    results in binary format."""
    parsed = parse(text)
    if isinstance(parsed, str):
        return parsed
    for stmt in parsed:
        why = _statement(stmt, masked, binary)
        if why is not None:
            return why
    return None


# Statements whose refusal reads no literal's value: only their names and their tree's
# structure (a COPY's does: ``FORMAT 'binary'``, a file's name).
_LITERAL_FREE = frozenset(("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"))


def literal_free(text: str) -> bool:
    """Whether the refusal of ``text`` is the same for every text of its shape: it parses,
    and each of its statements is a plain SELECT, INSERT, UPDATE or DELETE."""
    parsed = parse(text)
    return not isinstance(parsed, str) and all(
        len(stmt) == 1 and next(iter(stmt)) in _LITERAL_FREE for stmt in parsed
    )


def _statement(stmt: Node, masked: Masked, binary: bool) -> str | None:
    if not stmt:
        return None
    ((node, fields),) = stmt.items()
    kind = kind_of(node, fields) if isinstance(fields, dict) else "other"
    if kind in _CODE:  # its body is text the parse tree does not open
        return f"a {kind} statement makes code run unseen, which may read masked columns"
    hits: dict[str, Mapping[str, str]] = {}
    aliases: set[str] = set()
    for rv in _ranges(stmt):
        relname, schema = rv["relname"], rv.get("schemaname")
        if relname.lower() in _STATISTICS and schema in (None, "pg_catalog"):
            return f"{relname} holds sampled values of every column, masked ones too"
        if masked.view(relname, schema):
            return f"{relname} is a view over masked columns"
        columns = masked.table(relname, schema)
        if columns is not None:
            hits[relname.lower()] = columns
            aliases.add(relname.lower())
            alias = rv.get("alias", {}).get("aliasname")
            if isinstance(alias, str):
                aliases.add(alias.lower())
    if not hits:
        return None
    first = next(iter(hits))
    if node == "PrepareStmt":  # judged as the statement it prepares
        query = fields.get("query")
        inner = next(iter(query.items()), None) if isinstance(query, dict) else None
        kind = "other" if inner is None else kind_of(*inner)
    if kind not in _ALLOWED:
        return f"a {kind} statement may not name the masked table {first}"
    if node == "CopyStmt":
        why = _copy(fields, first)
        if why is not None:
            return why
    sensitive: dict[str, str] = {}
    for columns in hits.values():
        sensitive.update(columns)
    why = _compares(stmt, sensitive, first)
    if why is not None:
        return why
    allowed = plain_targets(stmt)
    for item in nodes(stmt):
        ref = item.get("ColumnRef")
        if isinstance(ref, dict):
            names = column_names(ref.get("fields", []))
            last = names[-1] if names else None
            whole = len(names) == 1 and last in aliases
            if whole:
                return f"a whole row of the masked table {first} is used ({names[0]})"
            if last is None or last in sensitive:
                if id(ref) not in allowed:
                    what = "*" if last is None else last
                    return f"the masked column {what} is used in an expression or clause"
                if binary and last is not None and not _binary_ok(sensitive[last]):
                    return _binary(last, sensitive[last])
                if binary and last is None:
                    for name, type_name in sensitive.items():
                        if not _binary_ok(type_name):
                            return _binary(name, type_name)
        indirection = item.get("A_Indirection")
        if isinstance(indirection, dict):
            for part in indirection.get("indirection", []):
                if isinstance(part, dict) and "A_Star" in part:
                    return "a whole row of a masked table is expanded in an expression"
                part_name = part.get("String", {}).get("sval") if isinstance(part, dict) else None
                if isinstance(part_name, str) and part_name.lower() in sensitive:
                    return f"the masked column {part_name} is used in an expression"
    return None


def _compares(stmt: Node, sensitive: Mapping[str, str], first: str) -> str | None:
    """Why ``stmt`` compares or orders by masked columns without naming them in a
    ColumnRef: a join USING them (or NATURAL, which may), a position in ORDER BY, GROUP BY
    or DISTINCT ON (which may be a masked column's)."""
    for node in nodes(stmt):
        join = node.get("JoinExpr")
        if isinstance(join, dict):
            if join.get("isNatural"):
                return f"a NATURAL join over the masked table {first} may compare masked columns"
            for name in column_names(join.get("usingClause") or []):
                if name in sensitive:
                    return f"a join USING the masked column {name} compares its values"
        for clause in ("sortClause", "groupClause", "distinctClause"):
            for item in node.get(clause) or []:
                if not isinstance(item, dict):
                    continue
                target = item.get("SortBy", {}).get("node", item)
                if isinstance(target, dict) and "A_Const" in target:
                    return (
                        f"a statement over the masked table {first} may not sort, group or"
                        " pick distinct rows by a column's position"
                    )
    return None


def _binary_ok(type_name: str) -> bool:
    from appliance.policy.masking import BYTEA, STRING_TYPES  # noqa: PLC0415

    return type_name in STRING_TYPES or type_name == BYTEA


def _binary(name: str, type_name: str) -> str:
    return (
        f"the masked column {name} ({type_name}) cannot be masked in binary format;"
        " ask for text results"
    )


def _options(fields: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for option in fields.get("options", []) or []:
        elem = option.get("DefElem", {})
        arg = elem.get("arg")
        value: Any = True
        if isinstance(arg, dict):
            if "String" in arg:
                value = arg["String"].get("sval", "")
            elif "Boolean" in arg:
                value = bool(arg["Boolean"].get("boolval", False))
            elif "Integer" in arg:
                value = arg["Integer"].get("ival", 0)
            else:
                value = arg
        out[str(elem.get("defname", "")).lower()] = value
    return out


def _copy(fields: Node, first: str) -> str | None:
    if fields.get("is_from"):
        return None
    if fields.get("filename") is not None or fields.get("is_program"):
        return f"COPY of the masked table {first} to a file or program"
    if fields.get("query") is not None:
        return f"COPY of a query over the masked table {first}: copy the table itself"
    options = _options(fields)
    if str(options.get("format", "text")).lower() == "binary" or options.get("binary"):
        return f"COPY of the masked table {first} in binary format: use text or csv"
    return None


def copy_out(text: str) -> CopyOut | None:
    """The COPY TO STDOUT in ``text`` (a whole text of one statement), or None."""
    parsed = parse(text)
    if isinstance(parsed, str) or len(parsed) != 1:
        return None
    fields = parsed[0].get("CopyStmt")
    if not isinstance(fields, dict) or fields.get("is_from") or fields.get("query"):
        return None
    relation = fields.get("relation") or {}
    relname = relation.get("relname")
    if not isinstance(relname, str):
        return None
    options = _options(fields)
    csv = str(options.get("format", "text")).lower() == "csv" or bool(options.get("csv"))
    columns = tuple(
        str(item.get("String", {}).get("sval", "")).lower() for item in fields.get("attlist", [])
    )
    header = options.get("header", False)
    return CopyOut(
        relname=relname.lower(),
        schema=relation.get("schemaname"),
        columns=columns,
        csv=csv,
        binary=str(options.get("format", "text")).lower() == "binary"
        or bool(options.get("binary")),
        delimiter=str(options.get("delimiter", "," if csv else "\t")),
        null=str(options.get("null", "" if csv else "\\N")),
        header=header is True or str(header).lower() in ("true", "on", "1", "match"),
        quote=str(options.get("quote", '"')),
        escape=str(options.get("escape", options.get("quote", '"'))),
    )
