"""Reading the trail for an export: its events in seq order, in batches, each with its
session's start, those a selection takes; read-only, with bounded memory."""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from typing import Any

from appliance.export.record import Record
from appliance.export.select import Selection
from appliance.trail.follow import session_start
from appliance.trail.query import payload_of

BATCH = 1000
"""Events read at a time."""
SESSIONS = 10_000
"""Session starts kept at a time; one forgotten is read again from the trail when needed."""
_QUERY = (
    "SELECT seq, ts, type, session, payload, prev_hash, hash FROM events"
    " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
)


def span(conn: sqlite3.Connection, session: str) -> tuple[int, int | None]:
    """Where a session's events lie: after the seq returned, up to its end (None: open)."""
    row = conn.execute("SELECT start_seq, end_seq FROM sessions WHERE id = ?", (session,))
    found = row.fetchone()
    if found is None:
        return 0, None
    return int(found[0]) - 1, None if found[1] is None else int(found[1])


class Reader:
    """The events a selection takes, read batch by batch after a seq."""

    def __init__(self, selection: Selection, *, batch: int = BATCH) -> None:
        self.selection = selection
        self.batch = batch
        self._starts: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def read(
        self, conn: sqlite3.Connection, after: int, upto: int | None = None
    ) -> tuple[list[Record], int]:
        """The records taken among the next events after ``after`` (up to ``upto``), and the
        seq read up to (``after`` when there was none)."""
        rows = conn.execute(_QUERY, (after, 2**63 - 1 if upto is None else upto, self.batch))
        selection = self.selection
        out: list[Record] = []
        seq = after
        for row in rows.fetchall():
            seq = row[0]
            kind, session = row[2], row[3]
            if kind == "session_start" and session is not None:
                start = self._remember(session, payload_of(seq, row[4]))
            elif session is not None:
                start = self._start(conn, session)
            else:
                start = {}
            if selection.timely(row[1]):
                record = Record.from_row(row, start)
                if selection.wanted(record):
                    out.append(record)
            if kind == "session_end" and session is not None:
                self._starts.pop(session, None)
        return out, seq

    def _start(self, conn: sqlite3.Connection, session: str) -> dict[str, Any]:
        found = self._starts.get(session)
        if found is None:
            found = self._remember(session, session_start(conn, session))
        return found

    def _remember(self, session: str, start: dict[str, Any]) -> dict[str, Any]:
        starts = self._starts
        starts[session] = start
        if len(starts) > SESSIONS:
            starts.popitem(last=False)
        return start
