"""One trail event as exports read it: its chain fields, its payload, and its session's start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.trail.query import identity_of, payload_of


@dataclass(frozen=True, slots=True)
class Meta:
    """What every record of one export shares: the trail's id, and the host it comes from."""

    trail: str | None
    host: str


@dataclass(frozen=True, slots=True)
class Record:
    """An event with everything its hash covers: ``text`` is its payload as stored.

    ``start`` is the payload of its session's ``session_start`` ({} for an event of no
    session, or a session whose start the trail does not hold)."""

    seq: int
    ts: int
    type: str
    session: str | None
    text: str
    prev_hash: str
    hash: str
    payload: dict[str, Any] = field(default_factory=dict)
    start: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: tuple[Any, ...], start: dict[str, Any] | None = None) -> Record:
        """From (seq, ts, type, session, payload, prev_hash, hash); a payload that is not a
        JSON object is a TrailError (verify says more)."""
        seq, ts, type, session, text, prev_hash, digest = row
        return cls(
            int(seq),
            int(ts),
            str(type),
            session,
            str(text),
            str(prev_hash),
            str(digest),
            payload_of(seq, text),
            start or {},
        )

    @property
    def identity(self) -> dict[str, Any] | None:
        """The identity the event is of: its own (a command records the one it ran under, a
        binding the one it binds), else its session's."""
        if "identity" in self.payload:
            return identity_of(self.payload)
        return identity_of(self.start)

    @property
    def backend(self) -> str | None:
        """The name of the backend its session went to (an error names it itself)."""
        backend = self.start.get("backend")
        if isinstance(backend, dict) and backend.get("name") is not None:
            return str(backend["name"])
        named = self.payload.get("backend")
        return named if isinstance(named, str) else None
