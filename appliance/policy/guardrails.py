"""The guardrails: allow or block one command, by the rules, before any of its bytes move.

Sans-io and pure: a command and who sent it where in, a :class:`~appliance.model.Decision`
out. Each statement of the command is decided on its own, the first matching rule winning;
the command is blocked if any statement is (a simple-protocol string of several statements
runs as one implicit transaction, so one blocked statement blocks it all).

What the text cannot tell is never guessed in the agent's favour. A statement's effect is
unknown when the backend may run another text (``Command.text_known``), when the text does
not parse, for a fast-path function call, for a statement the analysis marks (a DO block,
dynamic SQL), for a call of a function outside the allowlist, and for anything that moves the
search_path (``SET search_path``, ``set_config``), which changes what every unqualified name
means. For such a statement a blocking rule's statement criteria are taken as met (it might
be anything), while a rule that allows it must name the doubt: ``unknown = true``, the
statement's exact kind (``kinds = ["do"]``), or functions covering every unlisted call.

Decisions are cached by text and by who sent it where, so a statement repeated a million
times is decided once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pgparse

from appliance.model import Command, Decision, Prepared
from appliance.policy import functions, kinds
from appliance.policy.analysis import Analysis, Statement
from appliance.policy.globs import Globs
from appliance.policy.rules import PolicySettings, Rule
from appliance.policy.shape import shape

Analyse = Callable[[str], Analysis]
IdentityKey = tuple[Any, ...] | None

_UNKNOWN = Statement("unknown", "other")  # stands for a text whose statements are not known
# Statements that may name search_path: SET and RESET (SET SCHEMA too), and the ALTER ROLE
# and ALTER DATABASE ... SET that the next sessions start with.
_SETTERS = ("set", "reset", "alter_role", "alter_database")
_SET_NODES = ("AlterRoleSetStmt", "AlterDatabaseSetStmt")
_SET_CONFIG = ("set_config", "pg_catalog.set_config")
_ARTICLE = {"do": "a DO block", "call": "a CALL", "execute": "an EXECUTE"}
_TRANSACTION_CONTROL = "transaction"  # the category of BEGIN, COMMIT, ROLLBACK, SAVEPOINT...


@dataclass(frozen=True, slots=True)
class Doubt:
    """Why a statement's effect cannot be known, and what a rule allowing it must name:
    ``kind`` (an opaque statement, allowed by naming its kind), ``functions`` (calls outside
    the allowlist, allowed by a rule whose functions cover them all), or ``other`` (only
    ``unknown = true`` allows it)."""

    why: str
    kind: str | None = None
    functions: frozenset[str] = frozenset()
    other: bool = False


@dataclass(frozen=True, slots=True)
class Fact:
    """One statement as the rules see it: what it is, and the doubt about it (None: none).
    ``multiple`` is whether the command holds several statements (None: not known)."""

    statement: Statement
    doubt: Doubt | None
    multiple: bool | None


_UNPARSED = "the text does not parse"
_MOVED_AT_CONNECT = (
    "the session set its search_path when it connected, which changes what unqualified names mean"
)


def _too_long(length: int, longest: int) -> str:
    return f"the text is {length} characters long, more than the policy reads (max_text {longest})"


def _shaped(text: str | None) -> str | None:
    return None if text is None else shape(text) or text


def _flag(text: str) -> Doubt:
    return Doubt(text, other=True)


def _analyser() -> Analyse:
    from appliance.policy.analysis import analyse  # noqa: PLC0415

    return analyse


@functools.lru_cache(maxsize=4096)
def _moves_search_path(text: str) -> bool:
    """Whether a SET or RESET in ``text`` names search_path, as the grammar reads the name
    (quoted, upper-case, unicode-escaped, or spelt ``SET SCHEMA``); True if it cannot tell."""
    try:
        parsed = pgparse.parse(text)
    except pgparse.PGQueryError:
        return True
    for entry in parsed:
        stmt = entry.get("stmt", {})
        node = stmt.get("VariableSetStmt")
        for name in _SET_NODES:
            if name in stmt:
                node = stmt[name].get("setstmt")
        if node is not None and str(node.get("name", "")).lower() == "search_path":
            return True
    return False


class _Compiled:
    """One rule, ready to match: sets and compiled globs, built once."""

    __slots__ = (
        "backends",
        "block",
        "categories",
        "databases",
        "emails",
        "functions",
        "groups",
        "kinds",
        "reads",
        "rule",
        "subjects",
        "tables",
        "writes",
    )

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        # A hold restricts as a block does: it matches whatever a statement might be.
        self.block = rule.action != "allow"
        closed = self.block

        def globs(items: tuple[str, ...]) -> Globs | None:
            return Globs(items, closed=closed) if items else None

        def words(items: tuple[str, ...]) -> frozenset[str] | None:
            return frozenset(items) if items else None

        self.subjects = words(rule.subjects)
        self.emails = words(tuple(e.casefold() for e in rule.emails))
        self.groups = words(rule.groups)
        self.backends = words(rule.backends)
        self.databases = words(rule.databases)
        self.kinds = words(tuple(k for k in rule.kinds if k in kinds.KINDS))
        self.categories = words(tuple(k for k in rule.kinds if k in kinds.CATEGORIES))
        self.reads = globs(rule.reads)
        self.writes = globs(rule.writes)
        self.tables = globs(rule.tables)
        self.functions = globs(rule.functions)

    def applies(self, identity: dict[str, Any] | None, backend: str, database: str | None) -> bool:
        """Whether the rule's criteria on who and where hold (a session with no identity
        meets none of the identity criteria)."""
        if self.backends is not None and backend not in self.backends:
            return False
        if self.databases is not None and database not in self.databases:
            return False
        if self.subjects is None and self.emails is None and self.groups is None:
            return True
        if identity is None:
            return False
        if self.subjects is not None and identity.get("subject") not in self.subjects:
            return False
        if self.emails is not None:
            email = identity.get("email")
            if not isinstance(email, str) or email.casefold() not in self.emails:
                return False
        if self.groups is not None:
            held = identity.get("groups")
            if not isinstance(held, list | tuple) or not any(
                isinstance(g, str) and g in self.groups for g in held
            ):
                return False
        return True

    def _kind(self, statement: Statement) -> bool:
        found = (statement.kind, *statement.inner)
        if self.kinds is not None and not self.kinds.isdisjoint(found):
            return True
        if self.categories is None:
            return False
        if statement.category in self.categories:
            return True
        return any(kinds.category(k) in self.categories for k in found)

    def holds(self, fact: Fact) -> bool:
        """Whether the statement criteria hold, on what is known of the statement."""
        rule, statement = self.rule, fact.statement
        if rule.unknown and fact.doubt is None:
            return False
        if (self.kinds is not None or self.categories is not None) and not self._kind(statement):
            return False
        if self.reads is not None and not self._names(self.reads, statement.reads):
            return False
        if self.writes is not None and not self._names(self.writes, statement.writes):
            return False
        if self.tables is not None and not self._names(
            self.tables, statement.reads | statement.writes
        ):
            return False
        if self.functions is not None and not self.functions.any(statement.functions):
            return False
        if rule.no_where and not statement.no_where:
            return False
        return not (rule.multiple and fact.multiple is not True)

    def _names(self, globs: Globs, names: frozenset[str]) -> bool:
        """A blocking rule matches if any name may be one of its globs, whatever the case
        (a quoted "Billing" is another schema, but blocking it too is the safe side); an
        allowing rule only if every name surely is, as written."""
        if self.block:
            return globs.any(n.lower() for n in names)
        return bool(names) and globs.all(names)

    def _covers(self, doubt: Doubt) -> bool:
        """Whether this (allowing) rule names the doubt, so may allow in spite of it."""
        if self.rule.unknown:
            return True
        if doubt.other:
            return False
        if doubt.kind is not None and (self.kinds is None or doubt.kind not in self.kinds):
            return False
        if doubt.functions:
            return self.functions is not None and self.functions.all(doubt.functions)
        return doubt.kind is not None

    def matches(self, fact: Fact) -> bool:
        """Whether the rule matches the statement (its who-and-where already hold)."""
        if fact.doubt is not None:
            if self.block:
                return True  # it might be anything: fail closed
            return self._covers(fact.doubt) and self.holds(fact)
        return self.holds(fact)


class Policy:
    """The rules, compiled, and a bounded cache of decisions."""

    def __init__(
        self, settings: PolicySettings, analyse: Analyse | None = None, cache_size: int = 65536
    ) -> None:
        self.settings = settings
        self._analyse = analyse or _analyser()
        self._rules = tuple(_Compiled(rule) for rule in settings.rules)
        self._extra = Globs(settings.functions, closed=False)
        self._cache: dict[tuple[Any, ...], tuple[Decision, str]] = {}
        self._scopes: dict[tuple[Any, ...], tuple[_Compiled, ...]] = {}
        self._size = max(1, cache_size)

    # --- the decision ---------------------------------------------------------------------

    def decide(
        self,
        identity: dict[str, Any] | None,
        backend: str,
        database: str | None,
        command: Command,
        moved: bool = False,
    ) -> Decision:
        """Allow or block ``command``, sent under ``identity`` to ``database`` on ``backend``;
        ``moved``: the session set its search_path when it connected."""
        return self.verdict(identity, backend, database, command, moved)[0]

    def verdict(
        self,
        identity: dict[str, Any] | None,
        backend: str,
        database: str | None,
        command: Command,
        moved: bool = False,
    ) -> tuple[Decision, str]:
        """The decision, and what made it: ``rule``, ``default``, or ``unknown`` (the setting
        for what cannot be known), for reports such as ``witness policy test``."""
        if command.kind == "cancel":
            return Decision("allow", None, "a cancel request runs no statement"), "default"
        if moved:  # every unqualified name may mean something else: nothing is known
            rules = self._scope(_identity_key(identity), identity, backend, database)
            return self._decide(rules, [Fact(_UNKNOWN, _flag(_MOVED_AT_CONNECT), None)])
        who = _identity_key(identity)
        key: tuple[Any, ...] | None = None
        shaped: tuple[Any, ...] | None = None
        cache = self._cache
        if command.text_known:
            text = command.text
            runs = tuple(p.text for p in command.prepared)
            key = (command.kind, text, runs, who, backend, database)
            cached = cache.get(key)
            if cached is not None:
                return cached
            # By shape: texts that differ only in literal values are decided once. (A shape
            # holds a NUL, which no text does: the two kinds of key never meet.)
            form = shape(text)
            if form is not None and form != text:
                runs = tuple(_shaped(p.text) for p in command.prepared)
                shaped = (command.kind, form, runs, who, backend, database)
                cached = cache.get(shaped)
                if cached is not None:
                    return cached
        rules = self._scope(who, identity, backend, database)
        facts = self.facts(command)
        verdict = self._decide(rules, facts)
        if key is not None:
            doubt = facts[0].doubt if facts else None
            if (
                shaped is not None
                and (doubt is None or not doubt.why.startswith(_UNPARSED))
                and not any(f.statement.by_value for f in facts)
            ):
                # A reason that quotes the parser's error (its position moves with the
                # literals' lengths) stays with its own text, and so does a decision a
                # literal's value made (EXPLAIN (ANALYZE 1)); any other serves the shape.
                key = shaped
            if len(cache) >= self._size:
                del cache[next(iter(cache))]
            cache[key] = verdict
        return verdict

    def _scope(
        self, who: IdentityKey, identity: dict[str, Any] | None, backend: str, db: str | None
    ) -> tuple[_Compiled, ...]:
        """The rules whose who-and-where criteria hold, in order."""
        key = (who, backend, db)
        found = self._scopes.get(key)
        if found is None:
            if len(self._scopes) >= self._size:
                self._scopes.clear()
            found = tuple(r for r in self._rules if r.applies(identity, backend, db))
            self._scopes[key] = found
        return found

    def _decide(self, rules: tuple[_Compiled, ...], facts: list[Fact]) -> tuple[Decision, str]:
        """A block of any statement blocks the command; else a hold of any holds it."""
        first: tuple[Decision, str] | None = None
        held: tuple[Decision, str] | None = None
        for fact in facts:
            verdict = self._statement(rules, fact)
            action = verdict[0].action
            if action == "block":
                return verdict
            if action == "hold" and held is None:
                held = verdict
            if first is None:
                first = verdict
        if held is not None:
            return held
        if first is None:  # an empty text: nothing runs
            return Decision(
                self.settings.default, None, "the command holds no statement"
            ), "default"
        return first

    def _statement(self, rules: tuple[_Compiled, ...], fact: Fact) -> tuple[Decision, str]:
        doubt = fact.doubt
        control = fact.statement.category == _TRANSACTION_CONTROL
        for compiled in rules:
            rule = compiled.rule
            if rule.action == "hold" and control:
                continue  # BEGIN, COMMIT, SAVEPOINT...: never held on their own
            if compiled.matches(fact):
                if not compiled.block:
                    return Decision("allow", rule.name, f"allowed by rule {rule.name!r}"), "rule"
                if doubt is not None and not compiled.holds(fact):
                    return Decision(rule.action, rule.name, f"{rule.text} ({doubt.why})"), "rule"
                return Decision(rule.action, rule.name, rule.text), "rule"
        if doubt is not None:
            action = self.settings.unknown
            verb = "blocks" if action == "block" else "allows"
            reason = f"{doubt.why}, and no rule names it: the policy {verb} what it cannot know"
            return Decision(action, None, reason), "unknown"
        action = self.settings.default
        return Decision(action, None, f"no rule matched: the default is to {action}"), "default"

    # --- what the command does ------------------------------------------------------------

    def facts(self, command: Command) -> list[Fact]:
        """The command's statements, each with the doubt about it."""
        if not command.text_known:
            unsure = [p.describe() for p in command.prepared if not p.known]
            why = "the text the backend runs is not known" + (
                f" ({'; '.join(unsure)})" if unsure else " (its bytes' encoding is in doubt)"
            )
            return [Fact(_UNKNOWN, _flag(why), None)]
        if command.kind == "function_call":
            why = "the effect of a fast-path function call cannot be known"
            return [Fact(_UNKNOWN, _flag(why), None)]
        longest = self.settings.max_text
        if len(command.text) > longest:
            return [Fact(_UNKNOWN, _flag(_too_long(len(command.text), longest)), None)]
        analysis = self._analyse(command.text)
        if analysis.error is not None:
            why = f"{_UNPARSED} ({analysis.error})"
            return [Fact(_UNKNOWN, _flag(why), None)]
        multiple = analysis.multiple
        facts: list[Fact] = []
        for statement in analysis.statements:
            if statement.kind == "execute":
                facts += self._executed(command.prepared, multiple)
            else:
                facts.append(Fact(statement, self._doubt(statement, command.text), multiple))
        return facts

    def _executed(self, prepared: Iterable[Prepared], multiple: bool) -> list[Fact]:
        """A SQL EXECUTE, as the statements it may run: every known prepared statement the
        command runs (the record does not say which EXECUTE runs which, so each stands for
        all); with none known, an unknown statement."""
        facts: list[Fact] = []
        for entry in prepared:
            if entry.kind != "statement" or not entry.known or entry.text is None:
                continue
            if len(entry.text) > self.settings.max_text:
                why = _too_long(len(entry.text), self.settings.max_text)
                facts.append(Fact(_UNKNOWN, _flag(why), multiple))
                continue
            analysis = self._analyse(entry.text)
            if analysis.error is not None:
                why = f"a prepared statement it runs does not parse ({analysis.error})"
                facts.append(Fact(_UNKNOWN, _flag(why), multiple))
                continue
            for statement in analysis.statements:
                if statement.kind == "execute":
                    why = "a prepared statement may not run another EXECUTE"
                    facts.append(Fact(statement, _flag(why), multiple))
                else:
                    facts.append(Fact(statement, self._doubt(statement, entry.text), multiple))
        if not facts:
            why = "the statement an EXECUTE runs is not known"
            facts.append(Fact(Statement("execute", "code"), Doubt(why, kind="execute"), multiple))
        return facts

    def _doubt(self, statement: Statement, text: str) -> Doubt | None:
        """Why this statement's effect cannot be known, or None."""
        kind = statement.kind
        if kind in _SETTERS and _moves_search_path(text):
            return _flag("it moves the search_path, which changes what unqualified names mean")
        called = statement.functions
        if called and any(name in _SET_CONFIG for name in called):
            return _flag("it calls set_config, which can move the search_path")
        unlisted = frozenset(
            name for name in called if not functions.builtin(name) and not self._extra.match(name)
        )
        if statement.unknown is not None:
            what = _ARTICLE.get(kind, f"a {kind} statement")
            why = f"the effect of {what} cannot be known ({statement.unknown})"
            if unlisted:
                why += f", and it calls {_names(unlisted)}"
            return Doubt(why, kind=kind, functions=unlisted)
        if unlisted:
            why = f"it calls {_names(unlisted)}, outside the allowed functions"
            return Doubt(why, functions=unlisted)
        return None


def _names(names: frozenset[str]) -> str:
    return ", ".join(sorted(names))


def _identity_key(identity: dict[str, Any] | None) -> IdentityKey:
    if identity is None:
        return None
    groups = identity.get("groups")
    held = tuple(groups) if isinstance(groups, list | tuple) else ()
    return (identity.get("issuer"), identity.get("subject"), identity.get("email"), held)
