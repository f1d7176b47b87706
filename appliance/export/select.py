"""Which events an export takes: a time range, sessions, identities and backends."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.export.record import Record
from appliance.trail import chain
from appliance.trail.follow import matches

# Events about the trail itself: kept by every selection within its time range, for they
# are what vouches for the rest (a JSONL export is checked with them).
CHAIN = (chain.TRAIL, chain.CHECKPOINT)


@dataclass(frozen=True, slots=True)
class Selection:
    """``since`` and ``until`` bound the events' times (microseconds, inclusive);
    ``session`` is one session's id; ``identities`` match an event's identity (a subject
    exactly, or an email ignoring case); ``backends`` its session's backend by name. Each
    filter given must match; a list matches if any of its items does."""

    since: int | None = None
    until: int | None = None
    session: str | None = None
    identities: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()

    @property
    def filtered(self) -> bool:
        """Whether it leaves out events of the time range it covers."""
        return self.session is not None or bool(self.identities or self.backends)

    def timely(self, ts: int) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts <= self.until)

    def wanted(self, record: Record) -> bool:
        if not self.timely(record.ts):
            return False
        if record.type in CHAIN:
            return True
        if self.session is not None and record.session != self.session:
            return False
        if self.identities:
            identity = record.identity
            if not any(matches(identity, wanted) for wanted in self.identities):
                return False
        return not self.backends or record.backend in self.backends
