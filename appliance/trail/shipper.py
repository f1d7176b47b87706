"""Shipping every committed event to the central store: off the write-before-forward path,
by seq, in bounded batches, idempotent (the store keeps an event once however often it is
sent), and resumed after a restart of either side from a state file beside the trail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from appliance.config import TrailSettings
from appliance.trail import central, db, segments
from appliance.trail.anchor import AnchorError, where
from appliance.trail.central import Row
from appliance.trail.db import TrailError
from appliance.trail.publisher import Courier, Lag, State

BATCH = 5000  # events in one transaction: bounded memory, whatever the backlog
POLL_SECONDS = 1.0  # how often new events are looked for (checkpoints also wake it)


def unshipped(path: Any, after: int, limit: int = -1) -> list[Row]:
    """The events of the trail after ``after`` (the first ``limit`` of them)."""
    with db.reading(path) as conn:
        rows = conn.execute(
            "SELECT seq, ts, type, session, payload, prev_hash, hash FROM events"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
    return [tuple(row) for row in rows]


class Shipper(Courier):
    """Ships the trail's events to the central store."""

    what = "events to the central store"
    poll = POLL_SECONDS
    batch = BATCH

    @staticmethod
    def state_path(trail: TrailSettings) -> Path:
        return trail.central_state

    # Told (from the courier's thread) the last sealed event the store holds and verified,
    # and why a sealed segment it should hold does not pass.
    on_verified: Callable[[int], None] | None = None
    on_refused: Callable[[str], None] | None = None
    _refused: str | None = None

    def read(self, after: int) -> list[Any]:
        return unshipped(self.trail.path, after, BATCH)

    def carry(self) -> int:
        """A round of shipping, then the check of each sealed segment the store now holds,
        oldest first, when its events retire segments (``[trail] retire = "central"``)."""
        sent = super().carry()
        if self.trail.retire == "central":
            self.check_sealed()
        return sent

    def check_sealed(self) -> None:
        state = self.state
        for segment in segments.sealed(self.trail.path):
            if segment.last <= state.verified:
                continue
            if segment.last > state.published:
                break
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                why = central.held(
                    self._conn,
                    self.settings,
                    state.trail,
                    first=segment.first,
                    last=segment.last,
                    ends=db.segment_ends(segment),
                )
            except (AnchorError, TrailError) as exc:
                self._disconnect()
                state.error, state.error_at = str(exc), self.clock()
                self._save()
                raise
            if why is not None:
                message = (
                    f"the central store {where(self.settings)} does not hold sealed segment"
                    f" {segment.path.name} as this bastion does: {why}; the segment is kept"
                )
                if message != self._refused and self.on_refused is not None:
                    self.on_refused(message)  # once, not every round
                self._refused = message
                state.error, state.error_at = message, self.clock()
                self._save()
                return
            state.verified, self._refused = segment.last, None
            self._save()
            if self.on_verified is not None:
                self.on_verified(segment.last)

    def send(self, conn: psycopg.Connection[Any], items: list[Any]) -> None:
        central.ship(conn, self.settings, self.state.trail, items)

    def _connect(self) -> psycopg.Connection[Any]:
        return central.open_store(self.settings)


def lag(settings: TrailSettings) -> Lag:
    """Read from the trail and the state file; TrailError when the trail cannot be read."""
    with db.reading(settings.path) as conn:
        trail = db.trail_id(conn)
        state = State.load(settings.central_state, trail or "")
        last = db.last_seq(conn)
        first = conn.execute(
            "SELECT ts FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (state.published,)
        ).fetchone()
    oldest = None if first is None else int(first[0]) / 1e6
    return Lag.of(state, trail, max(0, int(last) - state.published), oldest)
