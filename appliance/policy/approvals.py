"""Held statements and their approvals: who may decide, how many must agree, and the windows
an approval may grant. Sans-io and pure; the clock is given.

A ``hold`` rule stops one statement inside a live session until people decide
(:mod:`appliance.proxy.holds` carries that out). Here is only the bookkeeping, the same
whoever asks: a hold is approved once ``required`` distinct members of the approving groups
have approved it, and denied as soon as one of them denies it. The identity that sent the
statement may neither approve nor deny it, and an identity outside the groups may do
neither. Every hold ends exactly once: approved, denied, expired, or withdrawn.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.config import ApprovalSettings

PENDING = "pending"
APPROVED = "approved"
DENIED = "denied"
EXPIRED = "expired"
WITHDRAWN = "withdrawn"
ENDS = (APPROVED, DENIED, EXPIRED, WITHDRAWN)
_ID_BYTES = 5  # ten hex digits: short enough to type, never reused while the recorder runs
_ENDED_KEPT = 1024  # ended holds kept for `approvals show`, newest


class ApprovalError(Exception):
    """A vote is refused; the message says why, for the person who cast it."""


def who(identity: dict[str, Any] | None) -> str:
    """An identity as people read it: its email, else its subject."""
    if identity is None:
        return "no identity"
    return str(identity.get("email") or identity.get("subject") or "an unnamed identity")


def same_person(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two identities are one: the same issuer and subject, or the same email."""
    if a is None or b is None:
        return False
    if a.get("subject") and (a.get("issuer"), a.get("subject")) == (
        b.get("issuer"),
        b.get("subject"),
    ):
        return True
    email_a, email_b = a.get("email"), b.get("email")
    return (
        isinstance(email_a, str)
        and isinstance(email_b, str)
        and (email_a.casefold() == email_b.casefold())
    )


@dataclass(slots=True)
class Vote:
    identity: dict[str, Any]
    approve: bool
    reason: str | None
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.identity,
            "approve": self.approve,
            "reason": self.reason,
            "at": self.at,
        }


@dataclass(slots=True)
class Hold:
    """One held statement: what, from whom, where, and how it stands."""

    id: str
    session: str
    n: int
    identity: dict[str, Any] | None
    backend: str
    database: str | None
    text: str
    rule: str | None
    reason: str
    shape: str | None
    requested: float
    deadline: float
    state: str = PENDING
    votes: list[Vote] = field(default_factory=list)
    ended: float | None = None
    why: str | None = None  # why it ended, for people
    window_minutes: int = 0

    @property
    def approvals(self) -> int:
        return sum(1 for v in self.votes if v.approve)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session,
            "n": self.n,
            "identity": self.identity,
            "backend": self.backend,
            "database": self.database,
            "text": self.text,
            "rule": self.rule,
            "reason": self.reason,
            "requested": self.requested,
            "deadline": self.deadline,
            "state": self.state,
            "votes": [v.as_dict() for v in self.votes],
            "ended": self.ended,
            "why": self.why,
            "window_minutes": self.window_minutes,
        }


def _who_key(identity: dict[str, Any] | None) -> tuple[Any, ...]:
    if identity is None:
        return (None,)
    return (identity.get("issuer"), identity.get("subject"), identity.get("email"))


class Approvals:
    """Every hold of one recorder, pending and recently ended, and the windows granted."""

    def __init__(self, settings: ApprovalSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.holds: dict[str, Hold] = {}
        # (who, backend, database, shape) -> (until, the hold whose approval granted it)
        self.windows: dict[tuple[Any, ...], tuple[float, str]] = {}

    def request(
        self,
        *,
        session: str,
        n: int,
        identity: dict[str, Any] | None,
        backend: str,
        database: str | None,
        text: str,
        rule: str | None,
        reason: str,
        shape: str | None,
    ) -> Hold:
        hold_id = secrets.token_hex(_ID_BYTES)
        while hold_id in self.holds:
            hold_id = secrets.token_hex(_ID_BYTES)
        now = self.clock()
        hold = Hold(
            hold_id,
            session,
            n,
            identity,
            backend,
            database,
            text,
            rule,
            reason,
            shape,
            requested=now,
            deadline=now + self.settings.timeout_seconds,
        )
        self.holds[hold_id] = hold
        return hold

    def waiting(self, identity: dict[str, Any] | None) -> int:
        """How many of ``identity``'s statements are held, waiting for a decision."""
        key = _who_key(identity)
        return sum(
            1 for h in self.holds.values() if h.state == PENDING and _who_key(h.identity) == key
        )

    def get(self, hold_id: str) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is None:
            raise ApprovalError(f"no hold has the id {hold_id!r} (see `witness approvals list`)")
        return hold

    def pending(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.state == PENDING]

    def refusal(self, identity: dict[str, Any] | None) -> str | None:
        """Why ``identity`` may not decide holds at all, or None if it may."""
        if identity is None:
            return "you have no identity bound: run `witness login` (approvers act as themselves)"
        held = identity.get("groups")
        groups = set(held) if isinstance(held, list | tuple) else set()
        if groups.isdisjoint(self.settings.groups):
            return (
                f"{who(identity)} may not decide holds: approvers are members of "
                f"{', '.join(self.settings.groups)}"
            )
        return None

    def vote(
        self,
        hold_id: str,
        identity: dict[str, Any] | None,
        approve: bool,
        reason: str | None = None,
        window_minutes: int = 0,
    ) -> Hold:
        """Cast a vote; the hold, ended if this vote decided it. Raises ApprovalError."""
        hold = self.get(hold_id)
        if hold.state != PENDING:
            raise ApprovalError(f"hold {hold_id} is {hold.state} already")
        if same_person(identity, hold.identity):
            raise ApprovalError(
                f"{who(identity)} sent this statement, and may not decide its own hold"
            )
        why_not = self.refusal(identity)
        if why_not is not None:
            raise ApprovalError(why_not)
        assert identity is not None
        if any(same_person(identity, v.identity) for v in hold.votes):
            raise ApprovalError(f"{who(identity)} has voted on hold {hold_id} already")
        if window_minutes and not approve:
            raise ApprovalError("only an approval grants a window")
        longest = self.settings.max_window_minutes
        if window_minutes > longest:
            raise ApprovalError(
                f"a window of {window_minutes} minutes is longer than the {longest} allowed"
                " (approvals.max_window_minutes)"
            )
        now = self.clock()
        hold.votes.append(Vote(identity, approve, reason, now))
        if not approve:
            self.end(hold, DENIED, f"denied by {who(identity)}" + (f": {reason}" if reason else ""))
        elif hold.approvals >= self.settings.required:
            hold.window_minutes = max(window_minutes, hold.window_minutes)
            self.end(
                hold, APPROVED, "approved by " + ", ".join(who(v.identity) for v in hold.votes)
            )
            if hold.window_minutes and hold.shape is not None:
                key = self._window_key(hold.identity, hold.backend, hold.database, hold.shape)
                self.windows[key] = (now + hold.window_minutes * 60.0, hold.id)
        elif window_minutes:
            hold.window_minutes = max(window_minutes, hold.window_minutes)
        return hold

    def end(self, hold: Hold, state: str, why: str) -> None:
        """End a pending hold (a vote decided it, or it expired or was withdrawn)."""
        if state not in ENDS:
            raise ValueError(f"{state!r} is not how a hold ends")
        if hold.state != PENDING:
            raise ApprovalError(f"hold {hold.id} is {hold.state} already")
        hold.state = state
        hold.ended = self.clock()
        hold.why = why
        ended = [h for h in self.holds.values() if h.state != PENDING]
        if len(ended) > _ENDED_KEPT:
            for old in sorted(ended, key=lambda h: h.ended or 0.0)[: len(ended) - _ENDED_KEPT]:
                del self.holds[old.id]

    def granted(
        self,
        identity: dict[str, Any] | None,
        backend: str,
        database: str | None,
        shape: str | None,
    ) -> str | None:
        """The hold whose approval lets this statement go on now without a hold, or None."""
        if shape is None or not self.windows:
            return None
        key = self._window_key(identity, backend, database, shape)
        found = self.windows.get(key)
        if found is None:
            return None
        until, hold_id = found
        if self.clock() >= until:
            del self.windows[key]
            return None
        return hold_id

    @staticmethod
    def _window_key(
        identity: dict[str, Any] | None, backend: str, database: str | None, shape: str
    ) -> tuple[Any, ...]:
        return (_who_key(identity), backend, database, shape)
