"""Values of masked columns that a command carries in its own text and parameters, so that
the trail does not keep them in the clear.

Masking a result covers what the backend sends; but a command can hold a masked column's
value itself: ``INSERT INTO people (ssn) VALUES ('123-45-6789')``, ``UPDATE people SET
ssn = $1``, or a guess in a filter (``WHERE ssn = '123-45-6789'``, refused, and still
recorded). Sans-io and pure: PostgreSQL's parse tree says which literals and parameters
they are; :mod:`appliance.policy.sqllex` says where each literal's token starts and ends.

- INSERT ... VALUES: the items in a masked column's place (the column list's, or the
  table's own order, which ``columns`` gives); ``ON CONFLICT DO UPDATE SET`` and UPDATE's
  ``SET``: what is assigned to a masked column.
- Anything else in a statement that names a masked table and a masked column outside the
  top-level SELECT's plain target list (a filter, ``INSERT ... SELECT``, MERGE, a multiple
  assignment, a column list the table's order cannot place): every literal and parameter
  of that statement, as that column's.

A text that does not parse has no tree: the caller masks every literal in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.policy import sqllex
from appliance.policy.maskguard import Masked, Node, column_names, nodes, parse, plain_targets

Columns = Callable[[str, str | None], Sequence[str] | None]  # a table's columns, in order


@dataclass(frozen=True, slots=True)
class Carried:
    """One literal (``text[start:end]``, saying ``value``) or parameter (``param`` > 0)
    that carries a value of the masked column ``column`` of ``table``."""

    table: str
    column: str
    start: int = 0
    end: int = 0
    value: str = ""
    param: int = 0


@dataclass(frozen=True, slots=True)
class _Place:
    """A literal's byte location or a parameter's number, in a masked column's place."""

    table: str
    column: str
    location: int = -1
    param: int = 0


def carried(text: str, masked: Masked, columns: Columns) -> tuple[Carried, ...] | None:
    """What ``text`` carries of masked columns; None if it does not parse."""
    parsed = parse(text)
    if isinstance(parsed, str):
        return None
    places: list[_Place] = []
    for stmt in parsed:
        if stmt:
            places += _statement(stmt, masked, columns)
    if not places:
        return ()
    return tuple(_locate(text, places))


def literals(text: str) -> Iterator[sqllex.Token]:
    """Every literal token of ``text`` (strings and numbers): what a text that does not
    parse may carry."""
    for token in sqllex.tokens(text):
        if token.kind in (sqllex.STRING, sqllex.NUMBER):
            yield token


def _statement(stmt: Node, masked: Masked, columns: Columns) -> list[_Place]:
    ((node, fields),) = stmt.items()
    named: dict[str, dict[str, str]] = {}  # name or alias -> masked columns
    tables: dict[str, str] = {}  # name or alias -> the table's name
    for rv in nodes(stmt):
        relname = rv.get("relname")
        if not isinstance(relname, str):
            continue
        found = masked.table(relname, rv.get("schemaname"))
        if found is None:
            continue
        for name in (relname.lower(), rv.get("alias", {}).get("aliasname")):
            if isinstance(name, str):
                named[name.lower()] = dict(found)
                tables[name.lower()] = relname.lower()
    if not named:
        return []
    sensitive = {c: t for t, cols in named.items() for c in cols}
    first_table = next(iter(tables.values()))
    handled: set[int] = set()  # subtrees whose places are known exactly
    places: list[_Place] = []
    if node == "InsertStmt":
        places += _insert(fields, masked, columns, handled)
    if node == "UpdateStmt" or (node == "InsertStmt" and fields.get("onConflictClause")):
        target = fields if node == "UpdateStmt" else fields["onConflictClause"]
        table = _table_of(fields.get("relation"))
        masked_here = masked.table(*table) if table else None
        for item in target.get("targetList", []) or []:
            res = item.get("ResTarget", {})
            val = res.get("val")
            name = str(res.get("name", "")).lower()
            if not isinstance(val, dict) or "MultiAssignRef" in val:
                continue
            handled.add(id(val))
            if masked_here is not None and name in masked_here:
                places += _values(val, table[0] if table else first_table, name)
    written = _written(node, fields, masked, columns)
    if written is not None and (fields.get("withClause") or fields.get("fromClause")):
        # The value may come from a CTE's or another relation's literals: all are masked.
        return [*places, *_values(stmt, *written)]
    # A masked column anywhere else: the statement's every value is its.
    allowed = plain_targets(stmt)
    for item in nodes(stmt):
        ref = item.get("ColumnRef")
        if not isinstance(ref, dict) or id(ref) in allowed:
            continue
        names = column_names(ref.get("fields", []))
        last = names[-1] if names else None
        if last is not None and last in sensitive:
            return [*places, *_values(stmt, tables[sensitive[last]], last, handled)]
    multi = any(
        "MultiAssignRef" in (item.get("ResTarget", {}).get("val") or {})
        for item in fields.get("targetList", []) or []
    )
    if multi or node == "MergeStmt":
        column = next(iter(next(iter(named.values()))), "")
        return [*places, *_values(stmt, first_table, column, handled)]
    return places


def _written(node: str, fields: Node, masked: Masked, columns: Columns) -> tuple[str, str] | None:
    """(table, column) of a masked column the INSERT or UPDATE writes, if any."""
    if node not in ("InsertStmt", "UpdateStmt"):
        return None
    table = _table_of(fields.get("relation"))
    found = masked.table(*table) if table else None
    if table is None or found is None:
        return None
    targets = [*(fields.get("cols") or []), *(fields.get("targetList") or [])]
    conflict = fields.get("onConflictClause") or {}
    targets += conflict.get("targetList") or []
    names = [str(t.get("ResTarget", {}).get("name", "")).lower() for t in targets]
    if node == "InsertStmt" and not fields.get("cols"):
        names += [n.lower() for n in columns(*table) or found]
    hit = next((n for n in names if n in found), None)
    return None if hit is None else (table[0].lower(), hit)


def _table_of(relation: Any) -> tuple[str, str | None] | None:
    if not isinstance(relation, dict) or not isinstance(relation.get("relname"), str):
        return None
    return relation["relname"], relation.get("schemaname")


def _insert(fields: Node, masked: Masked, columns: Columns, handled: set[int]) -> list[_Place]:
    table = _table_of(fields.get("relation"))
    found = masked.table(*table) if table else None
    if table is None or found is None:
        return []
    relname = table[0].lower()
    names = [
        str(c.get("ResTarget", {}).get("name", "")).lower() for c in fields.get("cols", []) or []
    ]
    if not names:
        names = [n.lower() for n in columns(*table) or ()]
    select = (fields.get("selectStmt") or {}).get("SelectStmt") or {}
    rows = select.get("valuesLists")
    places: list[_Place] = []
    if not rows:  # INSERT ... SELECT: what lands in a masked column is not placed
        if select and (not names or any(n in found for n in names)):
            column = next((n for n in names if n in found), next(iter(found)))
            places += _values(select, relname, column)
        return places
    for row in rows:
        items = row.get("List", {}).get("items", [])
        handled.add(id(row))
        if len(items) > len(names):  # the table's order does not place them: all are masked
            column = next(iter(found))
            for item in items:
                places += _values(item, relname, column)
            continue
        for name, item in zip(names, items, strict=False):
            if name in found:
                places += _values(item, relname, name)
    return places


def _values(expr: Any, table: str, column: str, handled: set[int] | None = None) -> list[_Place]:
    """The literals and parameters in ``expr`` (but in ``handled`` subtrees), as
    ``column``'s."""
    places: list[_Place] = []
    stack: list[Any] = [expr]
    while stack:
        node = stack.pop()
        if handled is not None and id(node) in handled:
            continue
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        const = node.get("A_Const")
        if isinstance(const, dict) and not const.get("isnull"):
            places.append(_Place(table, column, location=int(const.get("location", -1))))
        param = node.get("ParamRef")
        if isinstance(param, dict) and param.get("number"):
            places.append(_Place(table, column, param=int(param["number"])))
        stack.extend(v for v in node.values() if isinstance(v, dict | list))
    return places


def _locate(text: str, places: Sequence[_Place]) -> Iterator[Carried]:
    """Each place as a span of ``text`` (a literal) or a parameter number."""
    encoded = None if text.isascii() else text.encode("utf-8")
    seen: set[tuple[int, int]] = set()
    for place in places:
        if place.param:
            key = (-1, place.param)
            if key not in seen:
                seen.add(key)
                yield Carried(place.table, place.column, param=place.param)
            continue
        if place.location < 0:
            continue
        start = place.location
        if encoded is not None:
            start = len(encoded[:start].decode("utf-8", "replace"))
        token = next(sqllex.tokens(text, start), None)
        if token is None or (start, token.end) in seen:
            continue
        end, value = token.end, token.value
        if token.kind == sqllex.OP and token.value in ("-", "+"):  # a signed number
            number = next(sqllex.tokens(text, token.end), None)
            if number is None or number.kind != sqllex.NUMBER:
                continue
            end, value = number.end, token.value + number.value
        elif token.kind not in (sqllex.STRING, sqllex.NUMBER):
            continue  # TRUE, FALSE and the like: nothing of a value
        seen.add((start, end))
        yield Carried(place.table, place.column, start=start, end=end, value=value)
