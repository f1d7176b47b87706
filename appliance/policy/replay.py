"""What a policy would have decided for the commands a trail recorded: the report of
``witness policy test``.

It streams: events are read in order and forgotten, and what is kept is per rule (counts and
three examples) and per open session (who and where), never per command. Decisions are
cached by text, so a trail of repeated statements costs one analysis per distinct text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.policy.guardrails import Policy
from appliance.trail import query

EXAMPLES = 3
_SHOWN = 1000  # characters of an example's text kept in the report


@dataclass(slots=True)
class Tally:
    """The commands one rule (or the default, or the unknown setting) decided one way."""

    by: str
    rule: str | None
    action: str
    commands: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "rule": self.rule,
            "action": self.action,
            "commands": self.commands,
            "examples": self.examples,
        }


@dataclass(slots=True)
class Report:
    """Counts by rule and action, in the policy's order; then by the default and by the
    setting for what cannot be known."""

    policy: str
    tallies: dict[tuple[str, str | None, str], Tally] = field(default_factory=dict)
    commands: int = 0
    cancels: int = 0
    skipped: int = 0
    """Commands left out by the identity filter."""

    def count(self, by: str, rule: str | None, action: str, example: dict[str, Any]) -> None:
        key = (by, rule, action)
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = Tally(by, rule, action)
        tally.commands += 1
        if len(tally.examples) < EXAMPLES:
            tally.examples.append(example)

    def ordered(self, rules: list[str]) -> list[Tally]:
        """Tallies by rule in the policy's order, then the default's, then unknown's."""
        place = {name: i for i, name in enumerate(rules)}
        kinds = {"rule": 0, "default": 1, "unknown": 2}

        def key(t: Tally) -> tuple[int, int, str]:
            return (kinds[t.by], place.get(t.rule or "", 0), t.action)

        return sorted(self.tallies.values(), key=key)

    def as_dict(self, rules: list[str]) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "commands": self.commands,
            "cancels": self.cancels,
            "filtered_out": self.skipped,
            "decisions": [t.as_dict() for t in self.ordered(rules)],
        }


def events(
    conn: sqlite3.Connection, since: int | None, until: int | None
) -> Iterator[tuple[int, int, str, str | None, str]]:
    """(seq, ts, type, session, payload) of session starts and ends and of commands, in
    order. Starts before ``since`` are read too: a command needs its session's."""
    return conn.execute(
        """
        SELECT seq, ts, type, session, payload FROM events
        WHERE type IN ('session_start', 'session_end', 'command')
          AND (:until IS NULL OR ts <= :until)
        ORDER BY seq
        """,
        {"until": until},
    )


def replay(
    policy: Policy,
    rows: Iterator[tuple[int, int, str, str | None, str]],
    *,
    since: int | None = None,
    who: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Decide every command in ``rows`` (from :func:`events`) as ``policy`` would have."""
    report = Report(policy.settings.summary())
    sessions: dict[str | None, tuple[dict[str, Any] | None, str, str | None]] = {}
    folded = None if who is None else who.casefold()
    loads = json.loads
    read = 0
    for seq, ts, type_, session, text in rows:
        read += 1
        if progress is not None and read % 4096 == 0:
            progress(seq)  # by seq, the one measure of the way through that costs nothing
        if type_ != "command":
            if type_ == "session_start":
                payload = loads(text)
                backend = payload.get("backend")
                name = str(backend.get("name")) if isinstance(backend, dict) else ""
                database = payload.get("database")
                sessions[session] = (
                    query.identity_of(payload),
                    name,
                    database if isinstance(database, str) else None,
                )
            else:
                sessions.pop(session, None)
            continue
        if since is not None and ts < since:
            continue
        payload = loads(text)
        if payload.get("kind") == "cancel":
            report.cancels += 1
            continue
        identity, backend, database = sessions.get(session, (None, "", None))
        if "identity" in payload:  # the identity it ran under, when it changed mid-session
            identity = query.identity_of(payload)
        if who is not None and not _is(identity, who, folded):
            report.skipped += 1
            continue
        decision, by = policy.verdict(identity, backend, database, query.command_of(payload))
        report.commands += 1
        shown = str(payload.get("text", ""))
        example = {"session": session, "seq": seq, "text": shown[:_SHOWN]}
        if by != "rule":
            example["reason"] = decision.reason
        report.count(by, decision.rule, decision.action, example)
    return report


def _is(identity: dict[str, Any] | None, who: str, folded: str | None) -> bool:
    if identity is None:
        return False
    if identity.get("subject") == who:
        return True
    email = identity.get("email")
    return isinstance(email, str) and email.casefold() == folded
