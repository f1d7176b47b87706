"""One walk over a statement's parse tree: the tables, functions and nested statements in it.

The tree is pgparse's JSON form of PostgreSQL's raw parse tree: a node is ``{"Name":
{fields}}``, except where PostgreSQL's struct types a field as one node type (a
``RangeVar *relation``), which is given as the bare fields. A table reference is therefore
recognised by its fields (``relname``), wherever it stands. The walk keeps an explicit stack,
so a deep tree costs memory, never Python recursion.

Which tables are written is known from where they stand: the target of INSERT, UPDATE,
DELETE, MERGE, TRUNCATE, COPY FROM, SELECT INTO, CREATE TABLE AS and of every DDL statement
(the object a DDL statement creates, alters or drops counts as written). Every other table a
statement names is read. A name that matches a CTE visible where it stands is not a table.

Some nested statements never run when the outer one does: the statement of a plain
EXPLAIN, the body of a ``BEGIN ATOMIC`` function, the actions of a rule. Their tables count
as read, their writes and kinds are not reported, and their UPDATEs and DELETEs do not set
``no_where``. Functions are listed wherever they appear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.policy.sqlkinds import STATEMENTS, category_of, kind_of

Node = dict[str, Any]

# Fields that hold the statement's target: the table it writes, creates, alters or drops.
_TARGETS: dict[str, tuple[str, ...]] = {
    "InsertStmt": ("relation",),
    "UpdateStmt": ("relation",),
    "DeleteStmt": ("relation",),
    "MergeStmt": ("relation",),
    "TruncateStmt": ("relations",),
    "SelectStmt": ("intoClause",),
    "CreateTableAsStmt": ("into",),
    "CreateStmt": ("relation",),
    "AlterTableStmt": ("relation",),
    "IndexStmt": ("relation",),
    "ViewStmt": ("view",),
    "CreateSeqStmt": ("sequence",),
    "AlterSeqStmt": ("sequence",),
    "CreateTrigStmt": ("relation",),
    "RuleStmt": ("relation",),
    "CreatePolicyStmt": ("table",),
    "AlterPolicyStmt": ("table",),
    "ClusterStmt": ("relation",),
    "ReindexStmt": ("relation",),
    "RefreshMatViewStmt": ("relation",),
    "VacuumStmt": ("rels",),
    "RenameStmt": ("relation",),
    "AlterObjectSchemaStmt": ("relation",),
    "AlterOwnerStmt": ("relation",),
    "AlterObjectDependsStmt": ("relation",),
    "CreateStatsStmt": ("relations",),
    "CompositeTypeStmt": ("typevar",),
}

# Object types that are relations, and those that live on one (named "table.object").
_RELATIONS = frozenset(
    f"OBJECT_{t}" for t in ("TABLE", "VIEW", "MATVIEW", "FOREIGN_TABLE", "SEQUENCE", "INDEX")
)
_ON_RELATIONS = frozenset(
    f"OBJECT_{t}" for t in ("COLUMN", "TRIGGER", "RULE", "POLICY", "TABCONSTRAINT")
)

# The weakest lock that a write takes (RowExclusiveLock); LOCK in a weaker mode only reads.
_ROW_EXCLUSIVE = 3

_MERGE_ACTIONS = {"CMD_UPDATE": "update", "CMD_DELETE": "delete", "CMD_INSERT": "insert"}
_FALSE_WORDS = frozenset(("false", "fals", "fal", "fa", "f", "no", "n", "off", "of", "0"))


@dataclass(slots=True)
class Facts:
    """What the walk found; the caller freezes it into a Statement."""

    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    inner: set[str] = field(default_factory=set)
    no_where: bool = False
    unknown: str | None = None
    by_value: bool = False


_Frame = tuple[Node, frozenset[str], bool]
_NO_NAMES: frozenset[str] = frozenset()


def walk(root: Node, top: Node, facts: Facts) -> None:
    """Walk ``root`` (a statement node whose fields are ``top``), adding to ``facts``."""
    _Walk(top, facts).run(root)


class _Walk:
    def __init__(self, top: Node, facts: Facts) -> None:
        self.top = top
        self.facts = facts
        self.stack: list[_Frame] = []

    def run(self, root: Node) -> None:
        # The hot loop of the analysis: type() checks and one set lookup per field.
        reads, functions = self.facts.reads, self.facts.functions
        stack = self.stack
        push, pop = stack.append, stack.pop
        push((root, _NO_NAMES, True))
        while stack:
            node, scope, live = pop()
            relname = node.get("relname")
            if relname is not None:
                if type(relname) is str and (node.get("schemaname") or relname not in scope):
                    reads.add(relation_name(node))
                continue
            for key, value in node.items():
                kind = type(value)
                if kind is dict:
                    if key in STATEMENTS:
                        self.statement(key, value, scope, live)
                        continue
                    if key == "FuncCall":
                        name = dotted(value.get("funcname"))
                        if name:
                            functions.add(name)
                    push((value, scope, live))
                elif kind is list:
                    for item in value:
                        if type(item) is dict:
                            push((item, scope, live))
                        elif type(item) is list:
                            push(({"items": item}, scope, live))

    def statement(self, node: str, fields: Node, scope: frozenset[str], live: bool) -> None:
        """A statement node, at the top or nested: its target, its CTEs, its other fields."""
        facts = self.facts
        kind = kind_of(node, fields)
        if node == "CallStmt":
            # CALL's procedure is a FuncCall given as bare fields, unseen by the walk.
            called = fields.get("funccall")
            name = dotted(called.get("funcname")) if isinstance(called, dict) else ""
            if name:
                facts.functions.add(name)
        if live:
            if fields is not self.top and category_of(kind) != "read":
                facts.inner.add(kind)
            if node == "DoStmt" and facts.unknown is None:
                facts.unknown = "a DO block runs procedural code"
            elif node == "ExecuteStmt" and facts.unknown is None:
                facts.unknown = f"runs prepared statement {fields.get('name', '')}"
            elif node in _LATER and facts.unknown is None:
                facts.unknown = _LATER[node]
            where = fields.get("whereClause")
            if node in ("UpdateStmt", "DeleteStmt") and not _mentions_column(where):
                facts.no_where = True
            if node == "MergeStmt":
                # What its WHEN clauses do are writes of their own; with a join condition
                # that names no column (ON true), they reach every row.
                for clause in fields.get("mergeWhenClauses") or ():
                    when = clause.get("MergeWhenClause") if isinstance(clause, dict) else None
                    done = _MERGE_ACTIONS.get(str((when or {}).get("commandType")))
                    if done is not None:
                        facts.inner.add(done)
                if not _mentions_column(fields.get("joinCondition")):
                    facts.no_where = True

        targets = _targets(node, fields)
        if node == "CreateForeignTableStmt":
            # The table's definition is a CreateStmt's fields, nested under "base".
            base = fields.get("base")
            fields = {**(base if isinstance(base, dict) else {}), **fields}
            fields.pop("base", None)
        written = facts.writes if live else facts.reads
        for name in targets:
            written.update(_relations_in(fields.get(name)))
        written.update(_named_relations(node, fields))

        with_clause = fields.get("withClause")
        if isinstance(with_clause, dict):
            scope = self.enter_with(with_clause, scope, live)

        child_live = live
        if node == "ExplainStmt":
            child_live = live and _explain_analyses(fields)
            facts.by_value = facts.by_value or _options_by_value(fields)
        never_runs = _NEVER_RUN.get(node)
        rest = {}
        for key, value in fields.items():
            if key in targets or key == "withClause" or type(value) not in (dict, list):
                continue
            if key == never_runs:
                self.stack.append(({key: value}, scope, False))
            else:
                rest[key] = value
        self.stack.append((rest, scope, child_live))

    def enter_with(self, with_clause: Node, scope: frozenset[str], live: bool) -> frozenset[str]:
        """Push the CTEs, each with the names it can see; return the scope of the statement."""
        ctes = [c.get("CommonTableExpr") for c in with_clause.get("ctes") or ()]
        bodies = [c for c in ctes if isinstance(c, dict)]
        names = [str(c.get("ctename", "")) for c in bodies]
        recursive = bool(with_clause.get("recursive"))
        for i, cte in enumerate(bodies):
            visible = names if recursive else names[:i]
            self.stack.append((cte, scope.union(visible), live))
        return scope.union(names)


# Statements that make code run later, on other statements, where no decision sees it: a
# rule's actions, a trigger's function. What they will do is not known when they are made.
_LATER = {
    "RuleStmt": "a rule runs its actions on later statements, unseen by any decision",
    "CreateTrigStmt": "a trigger runs its function on later statements, unseen by any decision",
    "CreateEventTrigStmt": "an event trigger runs its function on later DDL, unseen",
}
# Fields holding statements that are defined, not run, when their statement runs.
_NEVER_RUN = {"CreateFunctionStmt": "sql_body", "RuleStmt": "actions"}


def _targets(node: str, fields: Node) -> tuple[str, ...]:
    """The fields of a statement that hold the tables it writes."""
    if node == "CreateForeignTableStmt":
        return ("relation",)
    if node == "CopyStmt":
        return ("relation",) if fields.get("is_from") else ()
    if node == "LockStmt":
        return ("relations",) if _int(fields.get("mode")) >= _ROW_EXCLUSIVE else ()
    if node == "GrantStmt":
        on_relations = (
            fields.get("targtype") == "ACL_TARGET_OBJECT" and fields.get("objtype") in _RELATIONS
        )
        return ("objects",) if on_relations else ()
    return _TARGETS.get(node, ())


def _named_relations(node: str, fields: Node) -> list[str]:
    """Relations named by lists of identifiers (DROP, COMMENT, SECURITY LABEL), not RangeVars."""
    if node == "DropStmt":
        objtype, objects = fields.get("removeType"), fields.get("objects") or []
    elif node in ("CommentStmt", "SecLabelStmt"):
        objtype, objects = fields.get("objtype"), [fields.get("object")]
    else:
        return []
    if objtype in _RELATIONS:
        drop = 0
    elif objtype in _ON_RELATIONS:
        drop = 1
    else:
        return []
    found = []
    for obj in objects:
        parts = _strings(obj)
        if drop:
            parts = parts[:-drop]
        if parts:
            found.append(".".join(parts[-2:]))
    return found


def _relations_in(value: Any) -> list[str]:
    """Every RangeVar in a target field (a RangeVar, a list of them, an IntoClause, ...)."""
    found = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if isinstance(item.get("relname"), str):
                found.append(relation_name(item))
            else:
                stack.extend(v for v in item.values() if isinstance(v, dict | list))
    return found


def _mentions_column(where: Any) -> bool:
    """Whether a WHERE refers to any column (or to a cursor): ``WHERE true`` does not."""
    stack = [where]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if "ColumnRef" in item or "CurrentOfExpr" in item:
                return True
            for value in item.values():
                if type(value) is dict or type(value) is list:
                    stack.append(value)
        elif type(item) is list:
            stack.extend(item)
    return False


def _explain_analyses(fields: Node) -> bool:
    """Whether EXPLAIN runs its statement: any ANALYZE option not plainly switched off."""
    for option in fields.get("options") or ():
        elem = option.get("DefElem") if isinstance(option, dict) else None
        if isinstance(elem, dict) and elem.get("defname") == "analyze" and _truthy(elem.get("arg")):
            return True
    return False


def _options_by_value(fields: Node) -> bool:
    """Whether an option's value is a literal (``ANALYZE 1``, ``'off'``): texts that differ
    only there do different things."""
    for option in fields.get("options") or ():
        elem = option.get("DefElem") if isinstance(option, dict) else None
        arg = elem.get("arg") if isinstance(elem, dict) else None
        if isinstance(arg, dict) and not arg.keys() <= {"Boolean"}:
            return True
    return False


def _truthy(arg: Any) -> bool:
    """An option's value as PostgreSQL reads a boolean; anything unclear counts as true."""
    if not isinstance(arg, dict):
        return True
    if "Boolean" in arg:
        return bool((arg["Boolean"] or {}).get("boolval"))
    if "Integer" in arg:
        return _int((arg["Integer"] or {}).get("ival")) != 0
    if "String" in arg:
        return str((arg["String"] or {}).get("sval", "")).lower() not in _FALSE_WORDS
    return True


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _strings(value: Any) -> list[str]:
    """The identifiers of a name list: ``[String, ...]`` or ``{"List": {"items": [...]}}``."""
    if isinstance(value, dict):
        value = (value.get("List") or {}).get("items")
    if not isinstance(value, list):
        return []
    return [
        str(item["String"].get("sval", ""))
        for item in value
        if isinstance(item, dict) and isinstance(item.get("String"), dict)
    ]


def dotted(names: Any) -> str:
    """A qualified name as written: ``schema.name`` or ``name``."""
    return ".".join(_strings(names))


def relation_name(rangevar: Node) -> str:
    """``schema.table`` where qualified, ``table`` otherwise; a catalog name is dropped."""
    schema = rangevar.get("schemaname")
    relname = str(rangevar.get("relname", ""))
    return f"{schema}.{relname}" if schema else relname
